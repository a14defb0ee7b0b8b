"""``twist polymq``: the polymq broker as a Twisted application plugin.

Kept tiny and import-light: Twisted imports every module in ``twisted/plugins`` when it looks
for plugins, so polymq itself is only imported when the service is made.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    synopsis = "[--config FILE] [--set KEY=VALUE ...] [--port-file FILE]"
    optParameters = [
        ["config", "c", None, "TOML config file"],
        ["port-file", None, None, "write the bound ports as JSON here once listening"],
    ]

    def __init__(self):
        super().__init__()
        self["overrides"] = []

    def opt_set(self, value):
        """Override a config key, e.g. adapters.mqtt.port=11883 (repeatable)."""
        self["overrides"].append(value)

    def postOptions(self):
        from polymq.core.config import ConfigError, load_config
        from polymq.core.plugins import PluginError, get_plugin_manager

        try:
            self["plugin_manager"] = pm = get_plugin_manager()
            self["sources"] = sources = {}
            self["effective_config"] = load_config(
                pm, path=self["config"], overrides=self["overrides"], sources=sources
            )
        except (ConfigError, PluginError) as exc:
            raise usage.UsageError(str(exc)) from None


@implementer(IServiceMaker, IPlugin)
class PolymqServiceMaker:
    tapname = "polymq"
    description = "polymq message broker (AMQP, MQTT, Kafka, OpenWire)"
    options = Options

    def makeService(self, options):
        from polymq.core.cli import describe_sources
        from polymq.core.service import BrokerService

        return BrokerService(
            options["effective_config"],
            plugins=options["plugin_manager"],
            port_file=options["port-file"],
            config_source=describe_sources(options["config"], options["sources"]),
        )


polymq = PolymqServiceMaker()

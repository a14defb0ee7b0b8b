"""The plugin module named by the ``polymq`` entry point: it contributes one adapter."""

from polymq.core.hookspecs import hookimpl
from polymq.core.plugins import AdapterSpec

from .transport import LineFactory


def build_factory(broker, section):
    return LineFactory(broker, section)


@hookimpl
def polymq_adapters():
    return [
        AdapterSpec(
            name="lineproto",
            default_port=7878,
            build_factory=build_factory,
            default_config={
                "enabled": False,
                "greeting": "polymq lineproto ready",
                "durable": False,
            },
            description="example line protocol: PUB / GET / SUB / ACK on queues",
        )
    ]

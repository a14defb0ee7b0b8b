"""Hook specifications for polymq plugins (pluggy project name ``polymq``).

A plugin is any module or object with functions decorated by :data:`hookimpl` whose names match
the specifications below. Built-in adapters and stores register through these same hooks; a
third-party package registers by declaring an entry point in the ``polymq`` group::

    [options.entry_points]
    polymq =
        myproto = myproto.plugin

Hooks are for set-up, connections and lifecycle; nothing here is called per message.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("polymq")
hookimpl = pluggy.HookimplMarker("polymq")


@hookspec
def polymq_adapters():
    """Return a list of :class:`polymq.core.plugins.AdapterSpec` this plugin contributes.

    Each spec names a wire protocol (``name`` is also its config table, ``[adapters.<name>]``),
    its standard port, adapter-specific config defaults, and ``build_factory(broker, section)``,
    which returns the Twisted ``ServerFactory`` serving one listener. ``section`` is the adapter's
    effective config table (``enabled``, ``host``, ``port`` and the ``default_config`` keys).
    The factory is only built when the adapter is enabled, so a disabled adapter costs nothing.
    """


@hookspec
def polymq_store_backends():
    """Return a list of :class:`polymq.core.plugins.StoreBackendSpec` this plugin contributes.

    ``factory(section)`` receives the ``[store]`` config table (``backend``, ``data_dir`` and any
    backend-specific keys) and returns an object providing
    :class:`polymq.core.store.interfaces.IStore`, not yet opened (the broker opens it on start).
    """


@hookspec(firstresult=True)
def polymq_authenticate(protocol, username, password, peer, broker):
    """Decide whether a client may log in.

    ``protocol`` is the adapter name (``"amqp"``, ``"mqtt"`` ...), ``username`` is the user name or
    ``None`` for an anonymous client, ``password`` is the password or SASL response (``str``,
    ``bytes`` or ``None``) and ``peer`` is the client address (a Twisted ``IAddress`` or a
    ``(host, port)`` tuple, or a ``host:port`` string). ``broker`` is the
    :class:`polymq.core.broker.Broker` (a plugin that needs none of it leaves the argument out of
    its signature). A client proven by a verified TLS client certificate arrives with the user
    name taken from the certificate and a
    :class:`polymq.core.security.CertificateCredential` as ``password``.

    Return a :class:`polymq.core.auth.Identity` to let the client in, a
    :class:`polymq.core.auth.Refusal` to keep it out, or ``None`` to leave the decision to the
    next plugin. The first non-``None`` answer wins; plugins registered later are asked first,
    so a third-party auth plugin overrides the built-in default one. Must not block: answer from
    memory, or return a ``Deferred`` firing with one of those answers (work that takes time,
    such as a password hash or a directory look-up, runs elsewhere and the client's session
    waits for it).
    """


@hookspec
def polymq_config_sections():
    """Return ``{section: {key: default, ...}}``: top-level config tables this plugin owns.

    Each key's type is enforced like the built-in sections' (``[management]`` comes from here);
    a section name that polymq already uses is ignored.
    """


@hookspec
def polymq_broker_started(broker):
    """Called once the broker has loaded its durable state and every listener is up.

    ``broker`` is the :class:`polymq.core.broker.Broker`. Use it to start timers, background
    tasks or to declare resources the plugin needs. The return value is ignored.
    """


@hookspec
def polymq_broker_stopping(broker):
    """Called when the broker begins to shut down, before listeners close and the store closes.

    Stop whatever ``polymq_broker_started`` started. The broker is still fully usable while this
    hook runs. The return value is ignored; a hook must not block.
    """

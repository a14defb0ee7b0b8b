"""polymq core: the protocol-neutral broker (routing, queues, streams, storage, dispatch)."""

__version__ = "0.1.0"

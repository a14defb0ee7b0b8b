"""polymq-stomp: the STOMP 1.0/1.1/1.2 adapter, packaged as a third-party polymq plugin."""

__version__ = "0.1.0"

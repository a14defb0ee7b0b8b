"""polymq-lineproto: an example third-party polymq adapter (a line-based queue protocol)."""

__version__ = "0.1.0"

"""polymq-rocketmq: the RocketMQ 4.x remoting protocol (name server and broker) for polymq."""

__version__ = "0.1.0"

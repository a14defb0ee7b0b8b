"""Wire-protocol adapters (AMQP, MQTT, Kafka, OpenWire), each registered through the ``polymq`` hooks."""

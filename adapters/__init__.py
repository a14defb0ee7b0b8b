"""Wire-protocol adapters (AMQP, MQTT, Kafka, OpenWire), registered through the polymq hooks."""

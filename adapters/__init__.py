"""Wire-protocol adapters (AMQP, MQTT, Kafka, OpenWire, and the any-protocol listener),
registered through the polymq hooks."""

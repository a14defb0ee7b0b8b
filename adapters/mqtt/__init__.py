"""MQTT 3.1.1 and 5.0 adapter: codec (wire format), session (state machine), transport."""

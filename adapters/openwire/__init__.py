"""OpenWire adapter: ActiveMQ 5.x JMS clients (loose encoding, protocol versions 9-12)."""

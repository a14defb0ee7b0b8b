"""AMQP 0-9-1 adapter: codec (wire format), session (state machines), transport (Twisted)."""

"""Kafka wire protocol adapter: topics are core streams, record batches are stored verbatim."""

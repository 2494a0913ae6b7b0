"""Kafka plumbing: topic names and bootstrap, the publisher, the consumer runner."""

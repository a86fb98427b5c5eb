"""Beam streaming pipelines (and the plain-Kafka validator they share code with)."""

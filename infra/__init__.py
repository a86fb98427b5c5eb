"""How the real parts start: the local Apache Kafka broker, the topic layout, client settings."""

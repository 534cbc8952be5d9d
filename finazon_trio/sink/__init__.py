"""The Kafka side: publisher, topics, spool, failed-messages file, republish, embedded broker."""

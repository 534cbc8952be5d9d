"""The expansion worker role (``finazon-trio expand``): frames records in, price ticks and
volume records out, exactly once, in a Kafka consumer group (README, "Scaling out")."""

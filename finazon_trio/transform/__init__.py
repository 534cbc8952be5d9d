"""The transform stage: bar frames in, price ticks and volume messages out."""

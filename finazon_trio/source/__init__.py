"""The source stage: the live WebSocket reader and the replay of a recording."""

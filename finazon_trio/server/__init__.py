"""A Finazon-compatible local server: synthetic market or a recording, with fault injection."""

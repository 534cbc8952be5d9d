"""Command-line helpers; importable (``scripts.apache_kafka``) by the tests and the benchmark."""

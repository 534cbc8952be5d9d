"""The performance benchmark (``python -m benchmarks.bench``, ``nox -s bench``)."""

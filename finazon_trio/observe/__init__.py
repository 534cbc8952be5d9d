"""Observation: metrics, their statistics, the dashboard and the Prometheus exporter."""

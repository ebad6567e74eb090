"""Monitoring stage: Prometheus config, recording and alert rules, Grafana dashboard, a Prometheus runner."""

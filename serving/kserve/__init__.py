"""The KServe host (KServe's Python ModelServer; maintained, the recommended host): its launcher part (``host.py``),
what each serving process runs (``app.py``), the supervisor that forks and replaces them (``supervisor.py``), the
request path (``request_path.py``, ``lane.py``, ``http_protocol.py``)."""

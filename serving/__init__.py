"""The host side of serving: the route registry (``routes``) and serving settings (``settings``), the archive
builder (``archive``), the launcher (``python -m serving``: ``server`` with its start-up checks, process group,
logs and drain), the watchdog, the health check, and a route's worker run in this process (``inprocess``).

Nothing here runs inside a TorchServe worker; archives pack ``handlers/`` and ``runtime/`` only.
"""

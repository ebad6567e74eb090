"""The TorchServe host (the design card's; archived upstream): its launcher part (``host.py``: config.properties,
readiness, the health rule), model archives (``archive.py``), the draining stop (``drain.py``), key renewal
(``keys.py``), its log files (``logs.py``) and logging configuration (``log4j2.xml``)."""

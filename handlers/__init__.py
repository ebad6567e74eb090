"""What a worker runs, on any host, and nothing else: one handler file per operation (``sample.py`` ...), the
``Service`` they share (``service.py``: ``load`` and ``answer``, the entry every host calls, and TorchServe's
``handle`` adapter), the worker's typed config (``config.py``), request validation against ``openapi.yaml``
(``schema.py``), device and backend choice (``device.py``), metrics (``metrics.py``) and errors (``errors.py``).

This package imports only itself and ``runtime`` (tests/test_layout.py): a TorchServe archive packs both whole, and
the KServe host's processes import them. The host side is ``serving/``.
"""

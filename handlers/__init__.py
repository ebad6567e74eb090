"""What a TorchServe worker runs, and nothing else: one handler file per operation (``sample.py`` ...), the
``Service`` they share (``service.py``), request validation against ``openapi.yaml`` (``schema.py``), device
and backend choice (``device.py``), metrics (``metrics.py``) and errors (``errors.py``).

An archive packs this folder and ``runtime/`` whole (``serving/archive.py``); this package imports only itself
and ``runtime`` (tests/test_layout.py). The host side, which builds archives and runs TorchServe, is ``serving/``.
"""

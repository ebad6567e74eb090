"""The latent explorer: a browser page (``static/``) and its server (``server.py``, ``python -m explorer``),
which ``make serve`` starts beside TorchServe."""

"""The launcher's HTTP client side: GET a JSON document from TorchServe's APIs, with a key when token auth is on."""

from __future__ import annotations

import json
import urllib.request


def http_json(url: str, timeout: float = 5, token: str | None = None) -> dict | list:
    """GET ``url`` as JSON, with a bearer token when given (urllib's errors propagate)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        return json.loads(response.read())

"""The launcher's HTTP client side: GET a JSON document from TorchServe's APIs, with a key when token auth is on."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

from serving.keys import refused_for_key, renewed


def get_json(url: str, timeout: float, token: str | None) -> dict | list:
    """One GET of ``url`` as JSON; an HTTP error carries the start of its body in its reason."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        body = e.read()[:200].decode(errors="replace")
        raise urllib.error.HTTPError(e.url, e.code, f"{e.reason}: {body}", e.headers, None) from None


def http_json(url: str, timeout: float = 5, key: Callable[[], str | None] | None = None) -> dict | list:
    """GET ``url`` as JSON, with the bearer key ``key()`` gives. A request refused for its key (TorchServe has
    just renewed it) is sent once more with the key read again; urllib's errors propagate."""
    refused = key() if key else None
    try:
        return get_json(url, timeout, refused)
    except urllib.error.HTTPError as e:
        if key is None or not refused_for_key(e.code, str(e.reason).encode()):
            raise
    return get_json(url, timeout, renewed(key, refused))

"""The key file (token auth on), TorchServe's format on both hosts: ``{"management": {"key", "expiration time"},
"inference": {...}, "API": {"key"}}`` in the host's working directory (``KEY_FILE``). TorchServe writes and renews
its own (``serving/torchserve/keys.py``); the KServe host writes one whose keys do not expire (``write_keys``).
Clients read it through the client package's ``Keys``, which reads it again when a key is refused."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from fmvae_client import ClientError, read_key_file

from serving.errors import ServerError


def read_keys(key_file: Path) -> dict[str, str]:
    """{"management": key, "inference": key, "API": key} from the key file (``read_key_file``)."""
    try:
        return read_key_file(key_file)
    except ClientError as e:
        raise ServerError(str(e).removesuffix(" (request -)")) from None


def write_keys(key_file: Path) -> None:
    """A new key file of keys that do not expire, readable by this user only, written atomically."""
    keys = {kind: {"key": secrets.token_urlsafe(16)} for kind in ("management", "inference", "API")}
    tmp = key_file.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(json.dumps(keys))
    os.replace(tmp, key_file)

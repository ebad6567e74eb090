"""Where a health check looks (``Probe``): what ``Host.problems`` and ``Host.notes`` read, whether from the
launcher's own host or from ``python -m serving.health`` in a container."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fmvae_client import Keys

from serving.settings import DRAIN_FILE, KEY_FILE


@dataclass(frozen=True)
class Probe:
    """Where a health check looks: the inference URL, the routes that must be served, the host's working directory
    (key file, drain mark, status files; None: none given) and TorchServe's management URL."""

    url: str
    models: tuple[str, ...]
    work_dir: Path | None = None
    management_url: str = ""

    def keys(self, kind: str) -> Keys:
        """The ``kind`` key from the key file in the working directory, when there is one."""
        key_file = self.work_dir / KEY_FILE if self.work_dir is not None else None
        return Keys(key_file=key_file if key_file is not None and key_file.is_file() else None, kind=kind)

    @property
    def draining(self) -> bool:
        return self.work_dir is not None and (self.work_dir / DRAIN_FILE).exists()

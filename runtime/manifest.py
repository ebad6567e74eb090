"""The export manifest: what model an export folder holds, written by ``make export`` and read by every reader
(workers, the archive builder, the launcher, the explorer, the benchmarks) as one typed ``Manifest``.

``manifest.json`` carries a format name and a version; a reader refuses a manifest of another version, or one that
is damaged, with a ``ManifestError`` that names the file and says to re-run ``make export``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import ManifestError

FILE = "manifest.json"
FORMAT = "fmvae-export"
VERSION = 3


@dataclass(frozen=True)
class Shapes:
    """The model's shapes: latent vectors (latent_dim,), images (channels, height, width)."""

    latent_dim: int
    image_shape: tuple[int, int, int]


@dataclass(frozen=True)
class Source:
    """The checkpoint the export was made from."""

    file: str
    sha256: str
    epoch: int | None = None
    data_sha256: dict[str, str] | None = None


@dataclass(frozen=True)
class Artifact:
    """One file of the export, with its hash and size, and for a quantized decoder what is quantized and how."""

    file: str
    sha256: str
    bytes: int
    quantized: str = ""


@dataclass(frozen=True)
class Fallback:
    """Reduced-precision decoders that failed the parity gate and were dropped (``--allow-fp32-fallback``, or an
    optional decoder): {dropped: fp32 twin}."""

    backends: dict[str, str]
    reason: str


@dataclass(frozen=True)
class Manifest:
    """An export folder's manifest. ``artifacts`` maps "decoder/<backend>", "encoder/<backend>" and "stats/latent" to
    their files; ``parity`` is the gate's report (export/parity.py)."""

    build_key: str
    source: Source
    model_config: dict
    shapes: Shapes
    export_config: dict
    versions: dict
    artifacts: dict[str, Artifact]
    parity: dict = field(default_factory=dict)
    fallback: Fallback | None = None

    @property
    def identity(self) -> str:
        """What names this export in answers and logs: the first 12 hex digits of its build key."""
        return self.build_key[:12]

    def serving_backends(self, backends: tuple[str, ...]) -> tuple[str, ...]:
        """``backends`` with each dropped decoder replaced by its fp32 twin."""
        swap = self.fallback.backends if self.fallback else {}
        return tuple(dict.fromkeys(swap.get(b, b) for b in backends))

    def to_dict(self) -> dict:
        """The JSON document (``source`` is stored as ``source_checkpoint``)."""
        d = asdict(self)
        d["source_checkpoint"] = d.pop("source")
        d["shapes"]["image_shape"] = list(self.shapes.image_shape)
        for artifact in d["artifacts"].values():
            if not artifact["quantized"]:
                del artifact["quantized"]
        if self.fallback is None:
            del d["fallback"]
        return {"format": FORMAT, "version": VERSION, **d}

    @classmethod
    def from_dict(cls, d: Any, origin: str) -> Manifest:
        """Inverse of ``to_dict``; ManifestError names ``origin`` and what is wrong."""
        if not isinstance(d, dict) or d.get("format") not in (FORMAT, "fmvae-export-v2"):
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ManifestError(f"{origin}: not an export manifest (format {found!r}, expected {FORMAT!r})")
        version = 2 if d["format"] == "fmvae-export-v2" else d.get("version")
        if version != VERSION:
            raise ManifestError(f"{origin}: manifest version {version}, this code reads version {VERSION}; "
                                "re-run `make export`")
        try:
            shapes = d["shapes"]
            fallback = d.get("fallback")
            return cls(
                build_key=str(d["build_key"]), source=Source(**d["source_checkpoint"]),
                model_config=dict(d["model_config"]),
                shapes=Shapes(int(shapes["latent_dim"]), tuple(int(s) for s in shapes["image_shape"])),
                export_config=dict(d["export_config"]), versions=dict(d["versions"]),
                artifacts={name: Artifact(**a) for name, a in d["artifacts"].items()}, parity=dict(d["parity"]),
                fallback=Fallback(**fallback) if fallback else None)
        except KeyError as e:
            raise ManifestError(f"{origin}: damaged manifest, {e} is missing; re-run `make export`") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise ManifestError(f"{origin}: damaged manifest ({e}); re-run `make export`") from None

    @classmethod
    def loads(cls, text: str | bytes, origin: str) -> Manifest:
        """Parse a manifest's JSON text; ``origin`` names it in errors (a path, or an archive and member)."""
        try:
            return cls.from_dict(json.loads(text), origin)
        except ValueError as e:
            raise ManifestError(f"{origin}: not a readable manifest ({e}); re-run `make export`") from None

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        """The manifest of the export folder ``folder``."""
        path = Path(folder) / FILE
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise ManifestError(f"{path}: not found; run `make export`") from None
        except OSError as e:
            raise ManifestError(f"{path}: not readable ({e.strerror})") from None
        return cls.loads(text, str(path))

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/manifest.json`` atomically (a temp file renamed into place)."""
        path = Path(folder) / FILE
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{FILE}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.to_dict(), indent=2) + "\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

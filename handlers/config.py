"""A worker's settings, one typed record (``WorkerConfig``): the host side builds it once from a route's settings
and its export (``serving/settings.py``, ``worker_config``) and hands it whole to whichever host runs the worker
(TorchServe: the ``handler:`` section of the archive's model-config YAML; the KServe host: its processes'
settings document), where the worker reads it back with ``WorkerConfig.from_dict``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from handlers.errors import ConfigError


@dataclass(frozen=True)
class WorkerConfig:
    """``decoder`` and ``encoder``: per device kind ("cpu", "cuda"), the backends to run in order of preference
    (no encoder: the route takes no images); ``stats``: the route uses classes or directions (latent_stats.npz);
    ``threads``: intra-op threads, "auto" or a number (env FMVAE_WORKER_THREADS overrides it); ``store_workers``:
    the workers of every route on the machine, among which "auto" divides the CPUs; ``max_body_bytes``: the largest
    body the worker parses; ``cuda_graph_batches``: the batch sizes a CUDA worker captures as graphs."""

    decoder: dict[str, tuple[str, ...]] = field(default_factory=dict)
    encoder: dict[str, tuple[str, ...]] = field(default_factory=dict)
    stats: bool = False
    threads: str | int = "auto"
    store_workers: int = 1
    max_body_bytes: int | None = None
    cuda_graph_batches: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        """Plain YAML and JSON (lists for tuples)."""
        plain = asdict(self)
        plain["decoder"] = {kind: list(b) for kind, b in self.decoder.items()}
        plain["encoder"] = {kind: list(b) for kind, b in self.encoder.items()}
        plain["cuda_graph_batches"] = list(self.cuda_graph_batches)
        return plain

    @classmethod
    def from_dict(cls, document: dict | None) -> WorkerConfig:
        """The record ``to_dict`` wrote; a key it does not know is a ConfigError naming it."""
        document = dict(document or {})
        unknown = set(document) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"the worker's config has unknown settings: {', '.join(sorted(unknown))}")
        for part in ("decoder", "encoder"):
            document[part] = {kind: tuple(b) for kind, b in (document.get(part) or {}).items()}
        document["cuda_graph_batches"] = tuple(document.get("cuda_graph_batches") or ())
        return cls(**document)

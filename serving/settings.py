"""Every serving setting in one place: how each route of ``serving/routes.py`` is served (``ModelSpec``: handler,
workers, batching, the backend each device runs, threads, body limit; ``worker_config`` is what its worker reads),
and the server (``ServerConfig``: addresses, ports, limits, files, and one nested record per host). The model's
shapes are not settings: workers read them from the export manifest."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from handlers.config import WorkerConfig
from runtime.artifacts import ARTIFACT_DIR
from runtime.manifest import Manifest
from serving.routes import ROUTES, Route

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = ROOT / "handlers"  # the worker package: one handler file per operation
SERVING = Path(__file__).resolve().parent

# Backend per device kind, in order of preference: a worker runs the first one whose artifact it has and that it
# can run (an ONNX backend on CUDA needs CUDAExecutionProvider), and logs why it skipped the others. CPU: static
# int8 ONNX (with one thread 2x the int8 TorchScript at batch 1, 2 dB closer to fp32, and the one the ONNX-only
# KServe image runs), then static int8 TorchScript (FMVAE_CPU_DECODER=torchscript-int8 puts it first); CUDA: the
# fp16 TorchScript decoder, then fp32; the int8 kernels are CPU-only (docs/export.md, docs/gpu.md).
DECODER = {"cpu": ("onnx-int8", "torchscript-int8"), "cuda": ("torchscript-fp16", "onnx-fp32", "torchscript-fp32")}
ENCODER = {"cpu": ("onnx-fp32",), "cuda": ("onnx-fp32", "torchscript-fp32")}
# Batch sizes (latents per decoder call) a CUDA worker captures as CUDA graphs at start; a call of n latents replays
# the smallest that holds n, larger ones run uncaptured (runtime/backends.py, GraphedDecoder).
CUDA_GRAPH_BATCHES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class ModelSpec:
    """How one model (one route, /predictions/<name>) is served."""

    handler: Path  # the TorchServe handler file (its ``handle`` function)
    export: str = ARTIFACT_DIR  # the model's export folder in the model store (model_store/<export>/)
    workers: int = 1
    decoder: dict[str, tuple[str, ...]] = field(default_factory=lambda: DECODER)
    encoder: dict[str, tuple[str, ...]] = field(default_factory=dict)  # empty: the model takes no images
    stats: bool = False  # the model uses classes or directions (latent_stats.npz)
    # Dynamic batching: up to batch_size requests per handler call, waiting at most max_batch_delay_ms for them
    # (0 makes TorchServe 0.12 wait ~100 ms for a lone request).
    batch_size: int = 8
    max_batch_delay_ms: int = 1
    # The images a request with only its required fields decodes (the route's operation, serving/routes.py).
    request_images: int = 16
    # The work TorchServe's queue may hold per worker, in images, counting REQUEST_COST_IMAGES more per request for
    # its fixed cost; one more request gets TorchServe's prompt 503 (docs/operations.md, overload). 576 holds 32
    # sample requests of 16 images; a request that gets in waits for about that much work (docs/serving.md).
    queue_images_per_worker: int = 576
    response_timeout_s: int = 30
    threads: str | int = "auto"  # intra-op threads per worker; "auto": the CPUs divided among the store's workers
    # On a host with a GPU: GPU workers (TorchServe's deviceType gpu, one CUDA context each), else CPU workers. A
    # host without one serves every model on CPU whatever this says.
    gpu: bool = False
    cuda_graph_batches: tuple[int, ...] = CUDA_GRAPH_BATCHES
    # The largest body a handler parses; larger ones get 413 body_too_large. 256 base64 PNGs of 28x28 need
    # < 320 KiB, 256 latents of 64 numbers < 350 KiB.
    max_body_bytes: int = 512 * 1024

    @property
    def job_queue_size(self) -> int:
        """TorchServe's job queue for this model (jobQueueSize): the requests of ``request_images`` whose work fits
        ``queue_images_per_worker`` per worker, at least ``MIN_QUEUE_REQUESTS`` per worker."""
        per_worker = self.queue_images_per_worker // (self.request_images + REQUEST_COST_IMAGES)
        return max(MIN_QUEUE_REQUESTS, per_worker) * self.workers


REQUEST_COST_IMAGES = 2  # a request's fixed cost (parsing, the frontend's round trip) in images' decoding and encoding
# A queue holds at least this many requests per worker, however large each is: as many clients as one host is
# sized for (docs/capacity) may each have a request of any route waiting without a refusal.
MIN_QUEUE_REQUESTS = 16
FULL_BATCH_IMAGES = 64  # a request this large fills a decoder call alone: batching it only delays its batch-mates


def model_spec(route: Route, workers: int = 1, gpu: bool = False) -> ModelSpec:
    """How ``route`` is served: its operation's handler file, with an encoder when the operation takes images and
    the latent statistics when it uses classes or directions; its queue sized in its requests' images, and one
    request per batch when one fills a decoder call."""
    images = route.needs.default_images
    return ModelSpec(HANDLERS / f"{route.operation}.py", export=route.export, workers=workers,
                     encoder=ENCODER if route.needs.images else {}, stats=route.needs.stats, gpu=gpu,
                     request_images=images, batch_size=1 if images >= FULL_BATCH_IMAGES else 8)


# One TorchServe model (a worker process) per route (docs/serving.md, workers); sample has two: TorchServe's frontend
# handles a worker's replies before it feeds it again, and with one the decoder idled 27% of the time at n=64
# (docs/serving-performance.md).
WORKERS = {"sample": 2}
# The routes whose workers use the GPU on a host that has one: the 64-d model's, which decode the most images per
# request (the 2-d routes answer the explorer one point at a time, where a GPU saves little; docs/gpu.md).
GPU_ROUTES = tuple(name for name, route in ROUTES.items() if route.export == ARTIFACT_DIR)
MODELS = {name: model_spec(route, WORKERS.get(name, 1), name in GPU_ROUTES) for name, route in ROUTES.items()}
STORE_WORKERS = sum(spec.workers for spec in MODELS.values())  # among which threads "auto" divides the CPUs
# The hosts (--server): each a package of serving/ whose class implements serving/host.py's Host.
HOSTS = {"torchserve": "serving.torchserve.host:TorchServe", "kserve": "serving.kserve.host:KServe",
         "ray": "serving.ray.host:RayHost"}


def worker_config(spec: ModelSpec, manifest: Manifest, store_workers: int | None = None) -> WorkerConfig:
    """What the worker of a route served as ``spec`` reads, over an export with ``manifest``: its decoders per
    device after the export's fallback (``Manifest.serving_backends``), encoders, statistics, threads, body limit
    and CUDA graph sizes; ``store_workers``: the workers sharing the CPUs (default: every route's,
    ``STORE_WORKERS``)."""
    return WorkerConfig(decoder={kind: manifest.serving_backends(b) for kind, b in spec.decoder.items()},
                        encoder=dict(spec.encoder), stats=spec.stats, threads=spec.threads,
                        store_workers=store_workers or STORE_WORKERS, max_body_bytes=spec.max_body_bytes,
                        cuda_graph_batches=spec.cuda_graph_batches)


ARCHIVE_DIR = Path("build/model_store")  # where `make archives` writes the .mar files that `make serve` serves
# In TorchServe's working directory: its key file (token auth on), and the launcher's mark while it drains.
KEY_FILE = "key_file.json"
DRAIN_FILE = "draining"


def setting(default: object, help: str, **cli: object) -> Any:  # noqa: A002
    """A ServerConfig field: its default and its help, from which `python -m serving` makes its flag
    (``cli``: argparse overrides, e.g. ``choices``; ``launcher_default`` when the command's default differs;
    ``flag`` when the flag is not the field's name)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class TorchServeConfig:
    """What only the TorchServe host reads (``ServerConfig.torchserve``); each field a flag of ``python -m serving``
    under its own name."""

    management_port: int = setting(8081, "TorchServe's management API port (loopback only)")
    torchserve_metrics_port: int = setting(8082, "TorchServe's own metrics port")
    # TorchServe 0.12 always starts its gRPC servers; they answer a rejected request with gRPC status OK and the
    # error inside, and nothing here is tested against them, so gRPC inference listens on loopback unless this is
    # on (docs/operations.md, gRPC).
    grpc: bool = setting(False, "TorchServe's gRPC inference on --host (default: loopback only; untested, see "
                                "docs/operations.md)")
    grpc_inference_port: int = setting(7070, "TorchServe's gRPC inference port")
    grpc_management_port: int = setting(7071, "TorchServe's gRPC management port")
    model_store: Path = setting(ARCHIVE_DIR, "TorchServe: the folder with the .mar archives (`make archives`)")
    token_expiration_min: float = setting(60.0, "TorchServe: lifetime of the keys in minutes; the launcher renews "
                                                "them at a third of it")
    # The JVM's heap bound (-Xmx; 0: the JVM's default, a quarter of the memory); its use: docs/operations.md.
    jvm_heap_mb: int = setting(256, "TorchServe: the JVM's heap bound in MB (0: the JVM's default)")


@dataclass(frozen=True)
class KServeConfig:
    """What only the KServe host reads (``ServerConfig.kserve``)."""

    processes: int = setting(0, "KServe: serving processes, each with every route (0: one per CPU; the Ray "
                                "host's fronts: one per 2 CPUs)")
    batch_size: int = setting(0, "KServe: requests per inference call (0: each route's batch size; 1: no "
                                 "batching)", flag="kserve-batch")


@dataclass(frozen=True)
class RayConfig:
    """What only the Ray host reads (``ServerConfig.ray``): the cluster it joins or starts, and how each route's
    deployment scales (the same for every route)."""

    ray_address: str = setting("", "Ray: the cluster to join (e.g. ray://head:10001 or head:6379; default: start "
                                   "a local one, stopped on exit)")
    nodes: int = setting(0, "Ray: local worker nodes of the cluster it starts (0: one per 2 CPUs, at least 1)")
    min_replicas: int = setting(1, "Ray: replicas each route's deployment keeps")
    max_replicas: int = setting(0, "Ray: replicas each route's deployment may scale to (0: one per worker node, "
                                   "at least --min-replicas)")
    calls_per_replica: int = setting(2, "Ray: the calls a front keeps in flight per running replica of a route "
                                        "(what waits meanwhile goes in the next call)")
    target_ongoing: float = setting(1.0, "Ray: the calls in flight per replica the autoscaler aims at (below "
                                         "--calls-per-replica, or it never scales up)")
    replica_cpus: float = setting(0.1, "Ray: the CPUs a replica reserves, for placement (a 2-CPU node places 20; "
                                       "its worker runs one decoder thread)")


@dataclass(frozen=True)
class ServerConfig:
    """One server, on any host: addresses, ports, the exports it serves, limits, authentication and logs; what
    only one host reads is nested under it (``torchserve``, ``kserve``, ``ray``). Every field is a flag of ``python -m
    serving`` (``serving/__main__.py`` derives them, the nested ones under their own names)."""

    server: str = setting("torchserve", "the host: TorchServe (the design card's), KServe's ModelServer "
                          "(maintained; every route in each of --processes processes) or KServe's ModelServer in "
                          "front of Ray Serve deployments (more than one machine)", choices=tuple(HOSTS))
    host: str = setting("127.0.0.1", "inference API address")
    metrics_host: str = setting("127.0.0.1", "metrics addresses")
    inference_port: int = setting(8080, "inference API port")
    metrics_port: int = setting(8083, "the handlers' metrics port (latency histograms, images, errors)")
    explorer: bool = setting(True, "the explorer page beside the API")
    explorer_port: int = setting(8084, "the explorer page's port (loopback only)")
    export_store: Path = setting(Path("model_store"), "the folder with the export folders (`make export`): what "
                                 "the KServe host and the explorer read")
    models: tuple[str, ...] = setting(tuple(MODELS), "the routes to serve (default: all of serving/routes.py)",
                                      metavar="MODEL")
    # bytes: TorchServe's own limit (an empty 413), above max_body_bytes; the KServe host answers 413 body_too_large
    max_request_size: int = setting(1024 * 1024, "the largest request body the host takes, in bytes")
    log_dir: Path | None = setting(None, "the log folder (in a library use: logs/ in the private temp dir)",
                                   launcher_default=Path("runs/serve/logs"))
    token_auth: bool = setting(False, "require bearer keys (TorchServe's; the KServe host writes a key file in the "
                                      "same format)")
    work_dir: Path | None = setting(None, "the host's working directory: the key file, the drain mark, the builds "
                                          "file and what `python -m serving rollout` talks to the launcher through "
                                          "(in a library use: the private temp dir)",
                                    launcher_default=Path("runs/serve/work"))
    # Logs: every file rolls over at log_max_mb and keeps log_backups old copies (serving/torchserve/log4j2.xml);
    # one line per request only with access_log on.
    log_max_mb: float = setting(10.0, "size at which each log file rolls over, in MB")
    log_backups: int = setting(2, "rolled-over copies kept per log file")
    access_log: bool = setting(False, "one line per request in the access log")
    drain_timeout: float = setting(20.0, "seconds a stop waits for accepted requests (docs/operations.md)")
    # Deadlines of the ports this project serves itself (the handlers' metrics, the explorer; serving/httpd.py):
    # a request must arrive whole within request_timeout, a kept-alive connection idles at most idle_timeout.
    idle_timeout: float = setting(30.0, "seconds a kept-alive connection to the metrics or explorer port (and "
                                        "KServe's API) may idle")
    request_timeout: float = setting(10.0, "seconds a request to the metrics or explorer port may take to arrive")
    torchserve: TorchServeConfig = field(default_factory=TorchServeConfig)
    kserve: KServeConfig = field(default_factory=KServeConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def log_max_bytes(self) -> int:
        return int(self.log_max_mb * 2**20)

    def ports(self) -> dict[str, int]:
        """Every port field's value by its name, the hosts' own included."""
        return {f.name: getattr(part, f.name) for part in (self, self.torchserve, self.kserve)
                for f in fields(part) if f.name.endswith("_port")}

    def port_flags(self) -> list[str]:
        """The flags that give ``python -m serving`` these ports."""
        return [a for name, port in self.ports().items() for a in (f"--{name.replace('_', '-')}", str(port))]

    def with_ports(self, **ports: int) -> ServerConfig:
        """A copy with the ports named (any of ``ports()``) set."""
        parts = {name: replace(getattr(self, name), **{k: v for k, v in ports.items()
                                                       if k in {f.name for f in fields(getattr(self, name))}})
                 for name in ("torchserve", "kserve", "ray")}
        return replace(self, **{k: v for k, v in ports.items() if k in {f.name for f in fields(self)}}, **parts)

    def with_free_ports(self) -> ServerConfig:
        """A copy whose ports are free on the loopback interface now."""
        names = list(self.ports())
        socks = [socket.socket() for _ in names]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        chosen = {name: s.getsockname()[1] for name, s in zip(names, socks, strict=True)}
        for s in socks:
            s.close()
        return self.with_ports(**chosen)

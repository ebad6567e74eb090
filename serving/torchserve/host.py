"""Start and stop a TorchServe serving the model store, plus the exporter of the handlers' Prometheus metrics.

Used by ``python -m serving`` (``make serve``), the tests and the benchmarks; its settings are a ``ServerConfig``
(``serving/settings.py``). Each instance gets its own ports (HTTP and gRPC) and a private temp dir (TorchServe
keeps its pid file and worker sockets there), so several can run on one machine. The management API always
listens on loopback and the model (registration) API stays off.

Life cycle (docs/operations.md, faults):

- start: the archives and ports are checked (``serving/checks.py``: a damaged archive or a busy port fails at
  once, named), and start returns once every model has a READY worker in this launcher's own process group; a
  model that TorchServe cannot load or whose workers die while starting fails the start within seconds, with
  TorchServe's reason (``serving/logs.py``).
- TorchServe never outlives its launcher: its process group has a watchdog (``serving/process.py``).
- stop drains (``serving/drain.py``: new connections refused, ``serving/listener.py``; accepted work answered),
  then stops the JVM, which stops its workers.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from fmvae_client import ClientError, fetch

from runtime.artifacts import ARTIFACT_DIR
from runtime.manifest import Manifest
from serving import listener
from serving.checks import PORT_ROLES, check_ports
from serving.errors import ServerError
from serving.host import Host, reach
from serving.logs import RotatingFile, check_writable, copy_output
from serving.probe import Probe
from serving.process import ProcessGroup
from serving.rollout import Request
from serving.settings import MODELS, ServerConfig
from serving.torchserve import drain
from serving.torchserve.archive import check_archive, packed_manifest
from serving.torchserve.keys import KeyRenewer
from serving.torchserve.logs import ServerLogs
from serving.torchserve.rollout import rollout

LOG4J2 = Path(__file__).resolve().parent / "log4j2.xml"  # TorchServe's logging configuration


def java() -> str | None:
    """The java TorchServe will run: $JAVA_HOME/bin/java when JAVA_HOME is set, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home:
        return str(Path(home) / "bin" / "java") if (Path(home) / "bin" / "java").is_file() else None
    return shutil.which("java")


def config_properties(config: ServerConfig, model_store: Path) -> str:
    """TorchServe's config.properties for ``config``."""
    ts = config.torchserve
    return "\n".join([
        f"inference_address=http://{config.host}:{config.inference_port}",
        f"management_address=http://127.0.0.1:{ts.management_port}",
        f"metrics_address=http://{config.metrics_host}:{ts.torchserve_metrics_port}",
        f"grpc_inference_address={config.host if ts.grpc else '127.0.0.1'}",
        "grpc_management_address=127.0.0.1",
        f"grpc_inference_port={ts.grpc_inference_port}",
        f"grpc_management_port={ts.grpc_management_port}",
        f"model_store={model_store}",
        "load_models=" + ",".join(f"{m}={m}.mar" for m in config.models),
        f"max_request_size={config.max_request_size}",
        f"allowed_urls=file://{model_store}/.*",  # models come from the local store only
        f"disable_token_authorization={str(not config.token_auth).lower()}",
        f"token_expiration_min={ts.token_expiration_min}",
        "enable_model_api=true",  # registration, for roll-outs: on loopback, with its key, archives of the store only
        "install_py_dep_per_model=false",
        "metrics_mode=prometheus",
        "decode_input_request=false",  # the handlers parse JSON bodies themselves, strictly
        f"vmargs={f'-Xmx{ts.jvm_heap_mb}m ' if ts.jvm_heap_mb else ''}-XX:+ExitOnOutOfMemoryError"
        f" -Dlog4j.configurationFile=file://{LOG4J2} -Dfmvae.log.size={config.log_max_bytes}"
        f" -Dfmvae.log.backups={config.log_backups} -Dfmvae.log.access={'info' if config.access_log else 'off'}",
        "",
    ])


class TorchServe(Host):
    """One TorchServe process group and its metrics exporter; a context manager that always cleans up
    (``serving/host.py``)."""

    kind = "torchserve"
    title = "TorchServe"
    ports = tuple(PORT_ROLES)  # the ServerConfig ports it listens on

    def __init__(self, config: ServerConfig | None = None) -> None:
        super().__init__(config or ServerConfig())
        self.renewer: KeyRenewer | None = None
        self.logs = ServerLogs(self.log_dir)
        store = self.config.torchserve.model_store.resolve()
        # Where each model's default version comes from: its archive, the export folder it was built from (a
        # model outside MODELS, a test's, from the released one) and its version (the build's identity).
        self.archives = {m: store / f"{m}.mar" for m in self.config.models}
        self.exports = {m: (self.config.export_store / (MODELS[m].export if m in MODELS else ARTIFACT_DIR)).resolve()
                        for m in self.config.models}
        self.versions: dict[str, str] = {}

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.config.torchserve.management_port}"

    @property
    def torchserve_metrics_url(self) -> str:
        return f"http://{reach(self.config.metrics_host)}:{self.config.torchserve.torchserve_metrics_port}/metrics"

    def launch(self) -> None:
        """Check the archives, the ports and the log folder; start the exporter, TorchServe and the key renewer."""
        if java() is None:
            raise ServerError("java not found: TorchServe needs a Java 17 runtime "
                              "(Debian: apt-get install openjdk-17-jre-headless; or set JAVA_HOME)")
        store = self.config.torchserve.model_store.resolve()
        missing = [m for m in self.config.models if not (store / f"{m}.mar").is_file()]
        if missing:
            raise ServerError(f"{store}: no archive for {', '.join(missing)}; run `make archives`")
        for model in self.config.models:
            check_archive(store / f"{model}.mar")
        self.versions = {m: self.served_manifest(m).identity for m in self.config.models}
        check_ports(self.config, self.ports)
        check_writable(self.log_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mark()
        self.drain_file.unlink(missing_ok=True)  # left by a launcher that was killed while draining
        properties = self.tmp / "config.properties"
        properties.write_text(config_properties(self.config, store))
        multiproc = self.start_exporter()
        env = os.environ | {
            "TMPDIR": str(self.tmp), "TEMP": str(self.tmp),  # pid file (Python) and java.io.tmpdir (sockets)
            "LOG_LOCATION": str(self.log_dir), "METRICS_LOCATION": str(self.log_dir),
            "PROMETHEUS_MULTIPROC_DIR": str(multiproc), "FMVAE_DRAIN_FILE": str(self.drain_file),
            "FMVAE_ACCESS_LOG": "1" if self.config.access_log else "0",  # the workers' lines with request IDs
        }
        # TorchServe's own entry point run by this interpreter (what its `torchserve` script runs), so that a
        # TorchServe installed with `pip --target` starts too.
        self.group = ProcessGroup([sys.executable, "-m", "ts.model_server", "--start", "--foreground", "--ncs",
                                   "--ts-config", str(properties), "--model-store", str(store)], env, self.work_dir,
                                  leftovers=[self.tmp, self.drain_file])
        output = RotatingFile(self.log_dir / "torchserve.out", self.config.log_max_bytes, self.config.log_backups)
        self._output = copy_output(self.process.stdout, output)
        if self.config.token_auth:  # from the start: a slow start must not outlive the first keys
            self.renewer = KeyRenewer(self.management_url, self.key_file,
                                      self.config.torchserve.token_expiration_min * 60)

    def waiting(self) -> list[str]:
        """What the start still waits for (``problems``: a READY worker of every model); a model TorchServe could
        not load, or whose workers die while loading, fails it at once, and so do READY workers that this
        launcher did not start (another server on the same ports)."""
        failure = self.logs.load_failure(set(self.config.models), self.config.torchserve.model_store)
        if failure:
            raise ServerError(failure)
        if found := self.problems(self.probe()):
            return found
        for model in self.config.models:
            ready = [w["pid"] for d in fetch(f"{self.management_url}/models/{model}", self.keys("management"))
                     for w in d.get("workers", []) if w.get("status") == "READY"]
            if not all(self.group.owns(pid) for pid in ready):
                raise ServerError(f"the management API on port {self.config.torchserve.management_port} answers for "
                                  f"workers this launcher did not start (pids {ready}): another server?")
        return []

    def probe(self) -> Probe:
        return replace(super().probe(), management_url=self.management_url)

    @staticmethod
    def problems(probe: Probe) -> list[str]:
        """TorchServe answers /ping "Healthy" and every model has at least one READY worker (its own /ping stays
        "Healthy" for a model it failed to load, and only says "Partial Healthy" once all its workers are down)."""
        try:
            status = fetch(f"{probe.url}/ping", probe.keys("inference")).get("status")
        except (ClientError, ValueError) as e:
            return [f"/ping: {e}"]
        found = [] if status == "Healthy" else [f"/ping says {status!r}"]
        for model in probe.models:
            try:
                workers = [w for d in fetch(f"{probe.management_url}/models/{model}", probe.keys("management"))
                           for w in d.get("workers", [])]
            except (ClientError, ValueError) as e:
                found.append(f"{model}: {e}")
                continue
            if not any(w.get("status") == "READY" for w in workers):
                found.append(f"{model}: no READY worker (0 of {len(workers)})")
        return found

    @property
    def key_note(self) -> str:
        return (f"renewed every {self.renewer.interval / 60:.3g} min (read the inference key for each request; on "
                "400 InvalidKeyException read it again and retry once)")

    @property
    def own_metrics(self) -> str:
        return f"{self.torchserve_metrics_url} (TorchServe)"

    def served_manifest(self, model: str) -> Manifest:
        """The export manifest packed in the archive the model's default version came from."""
        return packed_manifest(self.archives[model])

    def export_dir(self, model: str) -> Path:
        return self.exports[model]

    def rollout(self, routes: dict[str, Path], request: Request, say: Callable[[str], None]) -> None:
        """``serving/torchserve/rollout.py``."""
        rollout(self, routes, request, say)
        self.exports |= {route: folder.resolve() for route, folder in routes.items()}

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of TorchServe's logs, for error messages."""
        return self.logs.tail(lines)

    def in_flight(self) -> drain.Load:
        """What the server holds and has answered (``drain.Load``)."""
        return drain.in_flight(self.management_url, self.config.models, self.keys("management"),
                               self.registry)

    def drain(self) -> None:
        """Refuse new work and wait for what was accepted (at most ``drain_timeout``, or until ``hurry``); how it
        ended is kept in ``drained``."""
        self.drained = drain.drain(self.drain_file, self.in_flight, self.config.drain_timeout, self.hurry,
                                   lambda: listener.close_listener(self.process.pid, self.config.inference_port))

    def release(self) -> None:
        if self.renewer is not None:
            self.renewer.stop()

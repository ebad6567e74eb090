"""The serving images, built and run without a Docker engine: ``python -m deploy.image {base,build,test} --host
{torchserve,kserve,ray} --kind {gpu,cpu}`` (``make image``, ``make image-cpu``, ``make image-test``; ``HOST=kserve``).

- ``base``: a local stand-in for ``python:3.11-slim-bookworm`` (no public image can be pulled here):
  ``debootstrap --variant=minbase bookworm`` plus python3, venv, pip and CA certificates, imported with
  ``podman import`` as ``localhost/fmvae-base:bookworm``. Skipped when that image exists.
- ``build``: ``buildah bud`` of the Dockerfile on that base with ``HOST`` and ``KIND``, as ``localhost/fmvae:<kind>``
  (TorchServe), ``localhost/fmvae-kserve:<kind>`` or ``localhost/fmvae-ray:<kind>``, with this machine's CA bundle
  mounted (pip's HTTPS inside the build needs it). The GPU images take torch from PyPI (its Linux build is CUDA 13);
  the TorchServe CPU image takes the CPU wheel from pip's find-links folders if one is there (copied into
  ``deploy/wheels/``), else from PyTorch's CPU index; the KServe and Ray CPU images have no torch. Prints the build
  time and the image size.
- ``test``: ``base`` if missing, ``build``, then runs the image's entrypoint with ``buildah run`` (chroot isolation,
  host network: its ports are this machine's, so the host's ports must be free) and checks it as a client would:
  every route's example, auth, health, metrics, non-root, what the image leaves out, and that SIGTERM stops
  everything. Stops and removes what it started. Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from fmvae_client import Keys, request
from fmvae_client.client import refused_for_key

from deploy.errors import ImageError
from serving.checks import PORT_ROLES
from serving.host import host_class
from serving.routes import ROUTES, route_example
from serving.settings import HOSTS, KEY_FILE, ServerConfig

ROOT = Path(__file__).resolve().parent.parent
BASE = "localhost/fmvae-base:bookworm"
IMAGES = {"torchserve": "localhost/fmvae", "kserve": "localhost/fmvae-kserve",  # tagged with the kind
          "ray": "localhost/fmvae-ray"}
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
WHEELS = ROOT / "deploy" / "wheels"
CPU_TORCH = "torch==2.13.0+cpu"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Each host's ports in its image: the server's defaults (the explorer is off in the container).
PORTS = {host: {PORT_ROLES[field]: ServerConfig().ports()[field] for field in cls.ports if field != "explorer_port"}
         for host, cls in ((kind, host_class(kind)) for kind in HOSTS)}
# Every route, with its example (the OpenAPI document's, latents cut to the route's model).
EXAMPLES = {name: route_example(name, ROOT / "model_store") for name in ROUTES}


def run(*cmd: str, **kwargs: object) -> subprocess.CompletedProcess:
    """Run a command, raising ImageError with its output when it fails."""
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise ImageError(f"{' '.join(cmd[:3])} ... failed ({result.returncode}):\n{result.stdout[-2000:]}"
                         f"{result.stderr[-2000:]}")
    return result


def image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name]).returncode == 0


def image_size(name: str) -> int:
    return int(run("podman", "image", "inspect", "--format", "{{.Size}}", name).stdout)


def base() -> None:
    """Build and import the base image unless it exists."""
    if image_exists(BASE):
        print(f"{BASE} exists")
        return
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fmvae-base-") as root:
        print(f"debootstrap bookworm into {root} ...", flush=True)
        run("debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip,python-is-python3,"
            "ca-certificates", "bookworm", root, "http://deb.debian.org/debian")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in Path(root, cache).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        try:
            run("podman", "import", "--change", 'CMD ["python3"]', "-", BASE, stdin=tar.stdout)
        except BaseException:
            tar.kill()
            raise
        finally:
            tar.stdout.close()  # podman is done with it: no reader left, so tar cannot block on a full pipe
            tar.wait()
    print(f"{BASE}: {image_size(BASE) / 1e6:.0f} MB in {time.monotonic() - start:.0f} s")


def local_cpu_wheel() -> Path | None:
    """A torch 2.13.0+cpu wheel in pip's find-links folders (PIP_FIND_LINKS or pip's config), if any."""
    folders = os.environ.get("PIP_FIND_LINKS", "").split()
    config = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                            capture_output=True, text=True)
    folders += config.stdout.split()
    for folder in folders:
        wheels = sorted(Path(folder.removeprefix("file://")).glob("torch-2.13.0+cpu-cp311-*.whl"))
        if wheels:
            return wheels[-1]
    return None


def build(host: str, kind: str) -> str:
    """``buildah bud`` of the Dockerfile; returns the image name."""
    name = f"{IMAGES[host]}:{kind}"
    args = ["--build-arg", f"PYTHON_IMAGE={BASE}", "--build-arg", f"HOST={host}"]
    for stale in WHEELS.glob("*.whl"):
        stale.unlink()
    if kind == "cpu" and host != "torchserve":
        args += ["--build-arg", "KIND=cpu"]
    elif kind == "cpu":
        wheel = local_cpu_wheel()
        if wheel is not None:
            shutil.copy(wheel, WHEELS)
            print(f"torch: {wheel.name} (local wheel)")
        else:
            print(f"torch: {CPU_TORCH} from {CPU_INDEX}")
        args += ["--build-arg", "KIND=cpu"]
    volumes = ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"] if CA_BUNDLE.is_file() else []
    previous = run("podman", "image", "inspect", "--format", "{{.Id}}", name).stdout.strip() \
        if image_exists(name) else None
    start = time.monotonic()
    print(f"buildah bud -t {name} ...", flush=True)
    try:
        result = subprocess.run(["buildah", "bud", "--isolation", "chroot", "--network", "host", "--format", "docker",
                                 *volumes, *args, "-t", name, "."], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    finally:
        for copied in WHEELS.glob("*.whl"):
            copied.unlink()
    if result.returncode != 0:
        raise ImageError(f"buildah bud failed:\n{result.stdout[-4000:]}")
    print(f"{name}: {image_size(name) / 1e9:.2f} GB, built in {time.monotonic() - start:.0f} s")
    if previous is not None:  # the image this build replaced, now untagged: gigabytes
        subprocess.run(["podman", "rmi", previous], capture_output=True)
    return name


def config(name: str) -> dict:
    """The image's Docker config: Entrypoint, Cmd, User, Healthcheck, ..."""
    return json.loads(run("buildah", "inspect", "--type", "image", name).stdout)["Docker"]["config"]


def http(url: str, body: dict | None = None, key: str | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, or a POST of ``body`` as JSON (the client package, one try)."""
    answer = request("POST" if body is not None else "GET", url, body, Keys(key=key), timeout=30)
    return answer.status, answer.content_type, answer.body


def outside_address() -> str:
    """This machine's first non-loopback IPv4 address: reaches the container's ports from outside its loopback."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    raise ImageError("no non-loopback IPv4 address to test from")


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
        return False
    except ConnectionRefusedError:
        return True


class Container:
    """A working container of the image with its entrypoint running under ``buildah run``."""

    def __init__(self, name: str, log: Path) -> None:
        self.image = config(name)
        self.id = run("buildah", "from", name).stdout.strip()
        self._namespace: str | None = None
        with contextlib.ExitStack() as undo:  # a failure from here on leaves no working container or open log
            undo.callback(self.discard)
            self.root = Path(run("buildah", "mount", self.id).stdout.strip())
            self.log = undo.enter_context(open(log, "w"))  # closed by remove()
            command = [*self.image["Entrypoint"], *self.image["Cmd"]]
            self.process = subprocess.Popen(["buildah", "run", "--isolation", "chroot", "--network", "host", self.id,
                                             "--", *command], stdout=self.log, stderr=subprocess.STDOUT)
            undo.pop_all()  # running: remove() undoes it all

    def exec(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["buildah", "run", "--isolation", "chroot", "--network", "host", self.id, "--", *cmd],
                              capture_output=True, text=True, timeout=120)

    def namespace(self) -> str:
        """The mount namespace of the service (``buildah run`` makes one per command; the service's processes,
        TorchServe's and its workers', share it even after they are reparented)."""
        if self._namespace is None:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                if child.cmdline()[1:3] == ["-m", "serving"]:
                    self._namespace = os.readlink(f"/proc/{child.pid}/ns/mnt")
        if self._namespace is None:
            raise ImageError("the service's launcher is not running")
        return self._namespace

    def processes(self) -> list[psutil.Process]:
        """The processes of the service (its launcher, TorchServe, workers, watchdog)."""
        found = []
        for process in psutil.process_iter():
            try:
                if os.readlink(f"/proc/{process.pid}/ns/mnt") == self.namespace():
                    found.append(process)
            except (OSError, psutil.Error):
                continue
        return found

    def key(self, kind: str) -> str:
        return json.loads((self.root / "home/fmvae/run" / KEY_FILE).read_text())[kind]["key"]

    def stop(self, timeout: float = 60) -> tuple[bool, str]:
        """SIGTERM to the service's launcher (it drains, then stops TorchServe): (nothing left running, what)."""
        running = self.processes()
        launchers = [p for p in running if p.cmdline()[1:3] == ["-m", "serving"]]
        for launcher in launchers:
            launcher.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = self.processes()
        return bool(launchers) and not left, f"{len(running)} processes, {len(left)} left after SIGTERM to the launcher"

    def remove(self) -> None:
        """Kill whatever is left, unmount and remove the working container."""
        try:
            left = self.processes()
        except (ImageError, psutil.Error):  # the launcher never ran: nothing of the service to kill
            left = []
        for process in left:
            process.kill()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()
        self.discard()

    def discard(self) -> None:
        """Unmount and remove the working container."""
        subprocess.run(["buildah", "umount", self.id], capture_output=True)
        subprocess.run(["buildah", "rm", self.id], capture_output=True)


def check(results: list[tuple[str, bool, str]], what: str, test: Callable[[], tuple[bool, str]]) -> None:
    """Run one check and print its line."""
    try:
        passed, detail = test()
    except Exception as e:  # a check that crashes has failed, with the reason
        passed, detail = False, f"{type(e).__name__}: {e}"
    results.append((what, passed, detail))
    print(f"  {'ok  ' if passed else 'FAIL'} {what}: {detail}", flush=True)


def test(host: str, kind: str) -> int:
    """Build, start, check as a client, stop, remove; 0 when every check passed."""
    ports = PORTS[host]
    busy = [f"{port} ({role})" for role, port in ports.items() if not refused("127.0.0.1", port)]
    if busy:
        raise ImageError(f"ports in use: {', '.join(busy)}; the container uses the host's network")
    base()
    name = build(host, kind)
    results: list[tuple[str, bool, str]] = []
    with tempfile.TemporaryDirectory(prefix="fmvae-image-test-") as tmp:
        container = Container(name, Path(tmp) / "container.log")
        try:
            command = " ".join(container.image["Entrypoint"] + container.image["Cmd"])
            print(f"started {name} as {container.id}: {command}")
            healthcheck = container.image["Healthcheck"]["Test"][1:]  # ["CMD", ...]
            deadline = time.monotonic() + 180
            while container.exec(*healthcheck).returncode != 0 and time.monotonic() < deadline:
                time.sleep(2)
            print(f"service processes share mount namespace {container.namespace()}")
            url = f"http://127.0.0.1:{ports['inference']}"
            check(results, "HEALTHCHECK passes", lambda: (
                (r := container.exec(*healthcheck)).returncode == 0,
                f"{' '.join(healthcheck)} -> {r.stdout.strip()}"))
            check(results, "no key: refused", lambda: (
                (r := http(f"{url}/predictions/sample", {"n": 1}))[0] in (400, 401) and refused_for_key(r[0], r[2]),
                f"HTTP {r[0]} {r[2][:120].decode(errors='replace')}"))
            key = container.key("inference")
            health = "/ping" if host == "torchserve" else "/v2/health/live"
            check(results, f"with the key: {health}", lambda: (
                (r := http(f"{url}{health}", key=key))[0] == 200, f"HTTP {r[0]} {r[2].decode().strip()}"))
            for route, body in EXAMPLES.items():
                check(results, f"with the key: {route}'s example", lambda route=route, body=body: (
                    (r := http(f"{url}/predictions/{route}", body, key))[0] == 200,
                    f"HTTP {r[0]} {r[1]}, {len(r[2])} bytes"))
            outside = outside_address()
            metrics = {"TorchServe metrics": b"ts_inference_requests_total", "handler metrics": b"fmvae_requests_total"}
            for role, marker in ((role, metrics[role]) for role in ports if role in metrics):
                check(results, f"{role} on :{ports[role]}", lambda role=role, marker=marker: (
                    (r := http(f"http://{outside}:{ports[role]}/metrics"))[0] == 200 and marker in r[2],
                    f"HTTP {r[0]} from {outside}, {marker.decode()} {'present' if marker in r[2] else 'missing'}"))
            check(results, "runs as the non-root user", lambda: (
                (uids := {p.uids().real for p in container.processes()}) == {int(container.image["User"])},
                f"uids {sorted(uids)} of {len(container.processes())} processes"))
            if "management" in ports:
                management = f"http://127.0.0.1:{ports['management']}/models"
                check(results, "management answers on the container's loopback", lambda: (
                    (r := http(management, key=container.key("management")))[0] == 200, f"HTTP {r[0]}"))
                check(results, "management is not reachable from outside its loopback", lambda: (
                    refused(outside, ports["management"]) and not refused(outside, ports["inference"]),
                    f"{outside}:{ports['management']} refused, {outside}:{ports['inference']} answers"))
            else:
                check(results, "no Java, no TorchServe", lambda: (
                    (r := container.exec("sh", "-c", "command -v java; pip list 2>/dev/null | grep -ci torchserve"
                                         " || true")).stdout.split() == ["0"], f"found: {r.stdout.split()}"))
            if kind == "gpu":
                check(results, "torch is a CUDA build", lambda: (
                    (r := container.exec("python", "-c", "import torch; print(torch.version.cuda)")).stdout.strip()
                    not in ("", "None"), f"torch.version.cuda = {r.stdout.strip() or r.stderr.strip()[-200:]}"))
                check(results, "ONNX Runtime's CUDA provider resolves every library but the driver's", lambda: (
                    (missing := cuda_provider_missing(container)) <= {"libcuda.so.1"},
                    f"not found: {sorted(missing) or 'none'}"))
            else:
                check(results, "no CUDA libraries", lambda: (
                    (r := container.exec("sh", "-c", "pip list 2>/dev/null | grep -ci nvidia || true")).stdout.strip()
                    == "0", f"{r.stdout.strip()} nvidia packages"))
            if kind == "cpu" and host != "torchserve":
                check(results, "no torch: the workers run ONNX Runtime", lambda: (
                    (r := container.exec("python", "-c", "import importlib.util as u; print(u.find_spec('torch'))"
                                         )).stdout.strip() == "None", f"torch's module spec: {r.stdout.strip()}"))
            check(results, "SIGTERM stops everything it started", container.stop)
        finally:
            container.remove()
    failed = [what for what, passed, _ in results if not passed]
    print(f"{name}: {image_size(name) / 1e9:.2f} GB; {len(results) - len(failed)} of {len(results)} checks passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def cuda_provider_missing(container: Container) -> set[str]:
    """The libraries ``ldd`` cannot resolve for ONNX Runtime's CUDA provider inside the container."""
    where = container.exec("python", "-c", "import onnxruntime, pathlib; print(pathlib.Path(onnxruntime.__file__)"
                           ".parent / 'capi' / 'libonnxruntime_providers_cuda.so')")
    ldd = container.exec("ldd", where.stdout.strip())
    if ldd.returncode != 0:
        raise ImageError(f"ldd failed: {ldd.stderr.strip()}")
    return {line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.image", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["base", "build", "test"])
    parser.add_argument("--host", choices=list(IMAGES), default="torchserve")
    parser.add_argument("--kind", choices=["gpu", "cpu"], default="gpu")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("buildah", "podman", "debootstrap") if shutil.which(tool) is None]
    if missing:
        print(f"error: {', '.join(missing)} not found (Debian: apt-get install buildah podman debootstrap)")
        return 1
    try:
        if args.step == "base":
            base()
        elif args.step == "build":
            base()
            build(args.host, args.kind)
        else:
            return test(args.host, args.kind)
    except ImageError as e:
        print(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

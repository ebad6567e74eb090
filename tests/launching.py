"""Running the launcher as an operator does, for the fault and operations tests: ``Launcher`` (``python -m serving``
in a subprocess, on free ports), ``Clients`` (keep-alive clients that keep sending), and waiting helpers."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from serving.settings import ServerConfig, TorchServeConfig

ROOT = Path(__file__).resolve().parent.parent
NPY = {"n": 4, "seed": 1, "format": "npy"}
FAULT_MODELS = ("sample", "interpolate")  # what these tests serve: two models start faster than all of them


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


def wait_until(condition, seconds: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True



def exchange(port: int, request: bytes, then: bytes = b"", half_close: bool = False) -> tuple[int, dict, bytes]:
    """Send raw ``request`` bytes (then ``then``; with ``half_close``, shut the sending side after it) on a new
    connection to 127.0.0.1:``port`` and read one answer: (status, lower-case headers, body). A reset or a connection
    closed before a whole answer raises ConnectionError."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.sendall(request + then)
        if half_close:
            conn.shutdown(socket.SHUT_WR)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < length(answer):
            chunk = conn.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"closed after {len(answer)} bytes of an answer: {answer[:200]!r}")
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def length(answer: bytes) -> int:
    """The Content-Length of an answer's head (0 without one)."""
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class Launcher:
    """``python -m serving`` as `make serve` runs it, in a subprocess, on ``config``'s ports (default: free ones)."""

    def __init__(self, store: Path, tmp_path: Path, *extra: str, config: ServerConfig | None = None,
                 models: tuple[str, ...] = FAULT_MODELS) -> None:
        self.config = config or ServerConfig(torchserve=TorchServeConfig(model_store=store)).with_free_ports()
        ports = self.config.port_flags()
        self.temp_before = set(Path("/tmp").glob("fmvae-serve-*"))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving", "--model-store", str(store), "--log-dir", str(tmp_path / "logs"),
             *(() if "--work-dir" in extra else ("--work-dir", str(tmp_path / "work"))),
             "--models", *models, *ports, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self.lines: list[str] = []
        self.group: int | None = None
        self.leader: psutil.Process | None = None  # TorchServe's wrapper or the KServe host's supervisor
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.url = f"http://127.0.0.1:{self.config.inference_port}"

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self) -> int:
        """The TorchServe process group, once the launcher says ready."""
        assert wait_until(lambda: "ready:" in self.output() or self.process.poll() is not None, 90), self.output()
        assert "ready:" in self.output(), self.output()
        (self.leader,) = [c for c in psutil.Process(self.process.pid).children()
                          if {"ts.model_server", "serving.kserve.app"} & set(c.cmdline())]
        self.group = os.getpgid(self.leader.pid)
        return self.group

    def new_temp_dirs(self) -> set[Path]:
        return set(Path("/tmp").glob("fmvae-serve-*")) - self.temp_before

    def kill(self) -> None:
        """Whatever is still running: the launcher, and its TorchServe group."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.group is not None and group_alive(self.group):
            os.killpg(self.group, signal.SIGKILL)


class Clients:
    """Keep-alive clients sending one body to ``route`` back to back until ``stop()`` (or, each on its own, until a
    status in ``stop_on`` or a refused connection); ``outcomes``: ("http", status, body), ("refused", 0, b"") or
    ("error", 0, exception name) for every request; ``builds``: per client, the build (X-Model-Build) of each of
    its answers in order."""

    def __init__(self, url: str, body: dict, count: int, stop_on: tuple[int, ...] = (), route: str = "sample") -> None:
        host, port = url.removeprefix("http://").split(":")
        self.address, self.payload, self.stop_on = (host, int(port)), json.dumps(body).encode(), stop_on
        self.path = f"/predictions/{route}"
        self.outcomes: list[tuple[str, int, bytes]] = []
        self.builds: list[list[str]] = [[] for _ in range(count)]
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(count)]
        for t in self.threads:
            t.start()

    def _client(self, index: int) -> None:
        conn = None
        while not self.stopping.is_set():
            try:
                conn = conn or http.client.HTTPConnection(*self.address, timeout=60)
                conn.request("POST", self.path, self.payload, {"Content-Type": "application/json"})
                response = conn.getresponse()
                outcome = ("http", response.status, response.read())
                self.builds[index].append(response.getheader("X-Model-Build", ""))
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except ConnectionRefusedError:
                outcome = ("refused", 0, b"")
            except (OSError, http.client.HTTPException) as e:
                outcome, conn = ("error", 0, type(e).__name__.encode()), None
            with self.lock:
                self.outcomes.append(outcome)
            if outcome[0] == "refused" or outcome[1] in self.stop_on:
                break

    def join(self, timeout: float = 60) -> None:
        for t in self.threads:
            t.join(timeout)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


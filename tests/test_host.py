"""The launcher's host-side logic without a server: its output copier on a full disk, the worker log's cause line,
the log folder check, gRPC kept on loopback unless asked for, and the key client's one retry."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fmvae_client import TransportError

from serving import listener
from serving.errors import ServerError
from serving.logs import RotatingFile, check_writable, copy_output
from serving.settings import ServerConfig, TorchServeConfig
from serving.torchserve import drain
from serving.torchserve.host import config_properties
from serving.torchserve.logs import exception_line


def test_the_output_of_a_child_is_read_to_the_end_while_the_disk_is_full(capsys):
    read_end, write_end = os.pipe()
    thread = copy_output(os.fdopen(read_end, "rb"), RotatingFile(Path("/dev/full"), 1 << 20, 0), name="test-copy")
    line = b"x" * 1023 + b"\n"

    def child() -> None:  # 1 MB, far more than a pipe holds: it blocks unless every line is read
        with os.fdopen(write_end, "wb") as out:
            for _ in range(1024):
                out.write(line)

    writer = threading.Thread(target=child, daemon=True)
    writer.start()
    writer.join(timeout=20)
    thread.join(timeout=20)
    assert not writer.is_alive() and not thread.is_alive()
    errors = capsys.readouterr().err.splitlines()
    assert errors == ["/dev/full: cannot write (No space left on device): dropping this output until it can"]


def test_a_rotating_file_writes_again_once_it_can(tmp_path):
    log = RotatingFile(tmp_path / "out.log", 1 << 20, 1)
    log.file.close()
    (tmp_path / "out.log").unlink()
    log.write(b"after\n")  # a closed file (a failed write closes it) is opened again
    log.close()
    assert (tmp_path / "out.log").read_bytes() == b"after\n"


def test_the_cause_of_a_worker_load_failure_is_its_last_exception_line():
    lines = ["Backend worker process died.", "Traceback (most recent call last):", '  File "service.py", line 3',
             "    session = InferenceSession(path)",
             "onnxruntime.capi.onnxruntime_pybind11_state.InvalidProtobuf: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF",
             "Worker stopped."]
    assert exception_line(lines).startswith("onnxruntime.capi.onnxruntime_pybind11_state.InvalidProtobuf: ")
    assert exception_line(["no traceback here"]) is None


def test_an_unwritable_log_folder_is_named(tmp_path):
    check_writable(tmp_path / "new" / "logs")  # made when missing
    with pytest.raises(ServerError, match=r"^/proc/fmvae: the log folder is not writable"):
        check_writable(Path("/proc/fmvae"))


@pytest.mark.parametrize(("grpc", "address"), [(False, "127.0.0.1"), (True, "0.0.0.0")])
def test_grpc_inference_is_on_loopback_unless_asked_for(grpc, address, tmp_path):
    config = ServerConfig(host="0.0.0.0", torchserve=TorchServeConfig(grpc=grpc))
    properties = config_properties(config, tmp_path).splitlines()
    assert f"grpc_inference_address={address}" in properties
    assert "grpc_management_address=127.0.0.1" in properties


def loads(*rows: tuple[int, float, float]):
    """A ``state`` that returns these loads in turn, then the last one for ever."""
    it = iter(rows)
    last = [None]

    def state() -> drain.Load:
        last[0] = drain.Load(*next(it, rows[-1]))
        return last[0]
    return state


def test_a_drain_says_how_it_ended(tmp_path):
    """Quiet (nothing queued, no answer for QUIET_SECONDS), timed out with work queued, cut short, API gone."""
    closed = lambda: None  # noqa: E731
    calm = drain.drain(tmp_path / "d1", loads((2, 5, 5), (1, 6, 6), (0, 7, 7)), 5, threading.Event(), closed)
    assert calm.startswith("drained in") and calm.endswith("(new connections refused)") and (tmp_path / "d1").exists()
    busy = drain.drain(tmp_path / "d2", loads((3, 0, 0)), 0.3, threading.Event(), closed)
    assert busy == "drain timed out after 0.3 s with 3 request(s) still queued (new connections refused)"
    hurry = threading.Event()
    hurry.set()
    assert drain.drain(tmp_path / "d3", loads((3, 0, 0)), 5, hurry, closed).startswith("drain cut short after 0.0 s")

    def gone() -> drain.Load:
        raise TransportError("no answer from /models/sample after 1 tries: ConnectError: refused", "-")
    ended = drain.drain(tmp_path / "d4", gone, 5, threading.Event(), closed)
    assert ended == "drain ended: the management API no longer answers"


def test_with_the_listener_open_503s_to_constant_senders_do_not_hold_a_drain(tmp_path):
    """Where the listener stays open, clients that keep sending keep the queue non-empty and the 503 count
    rising; the drain ends once the requests queued at its start are answered and the 200s have stopped."""
    rising = ((4, 100 + i, 50 + min(i, 3)) for i in range(10_000))  # queued 4, answered +1 per poll, 200s stop
    state = loads(*rising)
    start = time.monotonic()
    ended = drain.drain(tmp_path / "d", state, 10, threading.Event(), lambda: "not permitted")
    assert ended.startswith("drained in") and ended.endswith("(listener left open: not permitted)"), ended
    assert time.monotonic() - start < 2
    held = drain.drain(tmp_path / "e", loads((4, 100, 50)), 0.5, threading.Event(), lambda: "not permitted")
    assert held.startswith("drain timed out")  # the 4 queued at the start were never answered


def test_closing_a_child_process_listener_refuses_new_connections_and_keeps_open_ones(tmp_path):
    """serving.listener on a real socket of a child process: the way the launcher closes TorchServe's door."""
    echo = ("import socket,sys\n"
            "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(16); print(s.getsockname()[1], flush=True)\n"
            "c,_=s.accept()\n"
            "while (data := c.recv(100)): c.sendall(data)\n")
    child = subprocess.Popen([sys.executable, "-c", echo], stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        kept = socket.create_connection(("127.0.0.1", port), timeout=5)
        kept.sendall(b"before")
        assert kept.recv(100) == b"before"
        assert listener.close_listener(child.pid, port) is None
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        kept.sendall(b"after")
        assert kept.recv(100) == b"after"  # the open connection is still served
        kept.close()
        assert listener.close_listener(child.pid, port).startswith("no process of the server listens")
    finally:
        child.kill()
        child.wait()


def test_a_lane_batches_what_waits_and_refuses_beyond_its_bound():
    """The KServe host's route queue: requests that wait go in calls of at most the batch size, in order; beyond the
    queue's bound (traverse's: 16) a request gets 503 overloaded with Retry-After at once, counted in the handler
    metrics; a failing call fails its batch with 500s and the lane goes on."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from handlers.service import Reply, Staged
    from serving.kserve.lane import Lane
    from serving.settings import MIN_QUEUE_REQUESTS, MODELS

    calls: list[list[bytes]] = []
    counted: list[tuple] = []

    class Service:
        worker = SimpleNamespace(model="traverse", identity="build", count_response="status", count_error="reason",
                                 recorder=SimpleNamespace(submit=lambda *writes: counted.extend(writes)))

        def compute(self, bodies: list[bytes]) -> Staged:
            calls.append(bodies)
            if b"boom" in bodies:
                raise RuntimeError("boom")
            time.sleep(0.02)
            return Staged(0.0, [("json", body) for body in bodies])

        def encode(self, item: tuple[str, bytes]) -> Reply:
            return Reply(200, item[1], "application/json", {})

        def settle(self, staged: Staged, replies: list[Reply]) -> list[Reply]:
            return replies

    queue = MODELS["traverse"].job_queue_size

    async def burst() -> list[Reply]:
        lane = Lane(Service(), queue, 4, ThreadPoolExecutor(1), ThreadPoolExecutor(2))
        first = await asyncio.gather(*(lane.submit(str(i).encode()) for i in range(queue + 5)))
        failed = await lane.submit(b"boom")
        return [*first, failed, await lane.submit(b"after")]

    replies = asyncio.run(burst())
    assert queue == MIN_QUEUE_REQUESTS == 16  # traverse's 72-image requests: 576 images hold only 7
    assert [r.status for r in replies[:queue + 5]] == [200] * queue + [503] * 5
    assert [r.body for r in replies[:queue]] == [str(i).encode() for i in range(queue)]
    assert [len(c) for c in calls[:4]] == [4, 4, 4, 4]
    refused = json.loads(replies[queue].body)
    assert refused["reason"] == "overloaded" and replies[queue].headers["Retry-After"] == "1"
    assert counted == [("status", 503), ("reason", "overloaded")] * 5
    assert replies[queue + 5].status == 500 and replies[queue + 6].status == 200


def test_an_answer_being_encoded_holds_neither_the_decoder_nor_other_requests():
    """A batch's answers are encoded on the encoding threads: while one takes long (a GIF), the inference thread
    takes up the next batch of the route and of other routes, and their answers arrive first."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from handlers.service import Reply, Staged
    from serving.kserve.lane import Lane

    computed: list[bytes] = []

    class Service:
        worker = SimpleNamespace(model="walk", identity="build")

        def compute(self, bodies: list[bytes]) -> Staged:
            computed.extend(bodies)
            return Staged(0.0, [("gif" if body.startswith(b"gif") else "npy", body) for body in bodies])

        def encode(self, item: tuple[str, bytes]) -> Reply:
            time.sleep(0.5 if item[0] == "gif" else 0)
            return Reply(200, item[1], "image/gif", {})

        def settle(self, staged: Staged, replies: list[Reply]) -> list[Reply]:
            return replies

    inference, encoders = ThreadPoolExecutor(1), ThreadPoolExecutor(2)

    async def mixed() -> list[bytes]:
        walk, decode = (Lane(Service(), 16, 1, inference, encoders) for _ in range(2))
        order: list[bytes] = []

        async def send(lane: Lane, body: bytes) -> None:
            order.append((await lane.submit(body)).body)

        first = asyncio.ensure_future(send(walk, b"gif 1"))
        await asyncio.sleep(0.05)
        await asyncio.gather(send(walk, b"npy 2"), send(decode, b"npy 3"), first)
        assert walk.idle() and decode.idle()
        return order

    order = asyncio.run(mixed())
    assert order[-1] == b"gif 1" and sorted(order[:2]) == [b"npy 2", b"npy 3"]
    assert computed[0] == b"gif 1"  # taken up first, answered last


def test_refusals_are_logged_as_one_line_per_interval_not_one_per_request(caplog):
    """An overload's 503s write no error line each: one warning per route and reason per interval (and at a drain),
    while other answers of 500 or more keep their own error line."""
    import asyncio
    from types import SimpleNamespace

    from serving.kserve.request_path import HostRules, Refusals

    overloaded = json.dumps({"code": 503, "reason": "overloaded", "message": "full", "field": "body"}).encode()
    state = SimpleNamespace(refusals=Refusals(), access_log=False)
    rules = HostRules(None, state)

    async def traffic() -> None:
        for i in range(5000):
            rules.log({"method": "POST", "path": "/predictions/traverse"}, str(i),
                      {"status": 503, "size": 0, "detail": overloaded}, 0.001)
        rules.log({"method": "POST", "path": "/predictions/sample"}, "x",
                  {"status": 500, "size": 0, "detail": b"boom"}, 0.001)
        state.refusals.flush()

    with caplog.at_level("INFO", logger="fmvae.kserve"):
        asyncio.run(traffic())
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0][0] == "ERROR" and "/predictions/sample answered 500" in lines[0][1]
    assert lines[1][0] == "WARNING" and lines[1][1].startswith("refused 5000 requests with 503 in ")
    assert lines[1][1].endswith(": traverse overloaded 5000")


SUPERVISED = """
import os, signal, sys, time
from pathlib import Path
import serving.kserve.supervisor as supervisor
supervisor.RETRY_PAUSES_S = (0.1, 0.1, 0.1)
mode, marks = sys.argv[1], Path(sys.argv[2])

def serve(index, ready_fd):
    starts = len(list(marks.glob(f"{index}-*")))
    (marks / f"{index}-{os.getpid()}").touch()
    if mode == "fails_at_start" and index == 1:
        os._exit(3)
    if mode == "replacements_fail" and index == 0 and starts:
        raise RuntimeError("cannot load")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    os.write(ready_fd, b"r")
    time.sleep(60)

fd = os.open("/dev/null", os.O_RDONLY)  # stands in for the listening socket: inherited, closed by the supervisor
sys.exit(supervisor.supervise(serve, fd, 2, marks / "processes.json"))
"""


def supervised(mode: str, marks: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SUPERVISED, mode, str(marks)], cwd=Path(__file__).parent.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, seconds: float = 20) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_supervisor_replaces_a_dead_process_and_says_so_in_its_status_file(tmp_path):
    status = tmp_path / "processes.json"
    process = supervised("serves", tmp_path)
    try:
        wait_for(lambda: status.exists() and json.loads(status.read_text())["serving"] == 2)
        first = int(next(tmp_path.glob("0-*")).name.split("-")[1])
        os.kill(first, 9)
        wait_for(lambda: json.loads(status.read_text())["replacing"])
        (gap,) = json.loads(status.read_text())["replacing"]
        assert gap["index"] == 0 and gap["why"].startswith("killed by SIGKILL after ")
        wait_for(lambda: json.loads(status.read_text()) == {"processes": 2, "serving": 2, "replacing": []})
        assert len(list(tmp_path.glob("0-*"))) == 2 and len(list(tmp_path.glob("1-*"))) == 1
        assert process.poll() is None
        process.send_signal(15)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
    output = process.stdout.read()
    assert "process 0 (pid" in output and "starting a replacement" in output and "process 0 is back" in output
    assert not status.exists()


def test_a_process_that_fails_to_start_ends_the_supervisor_with_its_code(tmp_path):
    process = supervised("fails_at_start", tmp_path)
    try:
        assert process.wait(timeout=20) == 3
    finally:
        process.kill()
    output = process.stdout.read()
    assert "process 1 (pid" in output and "ended before the host was ready: exit code 3" in output
    assert not (tmp_path / "processes.json").exists()
    for mark in tmp_path.glob("[01]-*"):  # the other process went too
        with pytest.raises(ProcessLookupError):
            os.kill(int(mark.name.split("-")[1]), 0)


def test_replacements_that_keep_failing_end_the_supervisor_after_the_retries(tmp_path):
    process = supervised("replacements_fail", tmp_path)
    try:
        wait_for(lambda: (tmp_path / "processes.json").exists()
                 and json.loads((tmp_path / "processes.json").read_text())["serving"] == 2)
        os.kill(int(next(tmp_path.glob("0-*")).name.split("-")[1]), 9)
        assert process.wait(timeout=30) == 1
    finally:
        process.kill()
    output = process.stdout.read()
    assert output.count("ended before it was ready") == 3 and "4 replacements in a row" in output
    assert "giving up" in output and len(list(tmp_path.glob("0-*"))) == 5


def test_the_health_check_names_a_process_being_replaced(tmp_path):
    from serving.kserve.host import KServe
    from serving.probe import Probe

    def gaps(work_dir: Path | None) -> list[str]:
        return KServe.notes(Probe("http://127.0.0.1:1", ("sample",), work_dir))

    assert gaps(tmp_path) == [] and gaps(None) == []
    (tmp_path / "processes.json").write_text(json.dumps({"processes": 2, "serving": 1, "replacing": [
        {"index": 0, "since": time.time() - 1.5, "why": "killed by SIGKILL after 35.2 s"}]}))
    (gap,) = gaps(tmp_path)
    assert gap.startswith("process 0 being replaced for 1.") and gap.endswith(
        "s (killed by SIGKILL after 35.2 s); 1 of 2 serving")


def test_the_launchers_flags_are_the_settings_fields():
    """Every ServerConfig field, the hosts' nested ones included, is a flag of `python -m serving`, named after it,
    with its help and default: the command line is derived from the settings, never restated (a new field is a new
    flag)."""
    from dataclasses import fields

    from serving.__main__ import config_of, parser
    from serving.settings import KServeConfig, RayConfig
    cli = parser()
    flags = {a.dest: a for a in cli._actions if a.dest != "help"}
    parts = {"torchserve": TorchServeConfig, "kserve": KServeConfig, "ray": RayConfig}
    nested = {f"{part}.{f.name}" for part, kind in parts.items() for f in fields(kind)}
    assert set(flags) == {f.name for f in fields(ServerConfig) if f.name not in parts} | nested
    assert all(a.help for a in flags.values())
    assert flags["kserve.batch_size"].option_strings == ["--kserve-batch"]
    assert flags["torchserve.management_port"].option_strings == ["--management-port"]
    assert flags["ray.calls_per_replica"].option_strings == ["--calls-per-replica"]
    assert config_of(cli.parse_args([])) == ServerConfig(log_dir=Path("runs/serve/logs"),
                                                         work_dir=Path("runs/serve/work"))
    given = config_of(cli.parse_args(["--server", "kserve", "--processes", "3", "--no-explorer", "--token-auth",
                                      "--log-max-mb", "2.5", "--models", "sample", "decode2d", "--kserve-batch", "1",
                                      "--management-port", "9001"]))
    assert (given.server, given.kserve, given.explorer, given.token_auth) == ("kserve", KServeConfig(3, 1), False, True)
    assert given.log_max_bytes == int(2.5 * 2**20) and given.models == ("sample", "decode2d")
    assert given.torchserve.management_port == 9001 and given.ports()["management_port"] == 9001


@pytest.mark.parametrize("host", ["torchserve", "kserve"])
def test_a_failed_drain_still_stops_the_process_group_and_removes_the_temp_dir(host, monkeypatch):
    from serving.kserve.host import KServe
    from serving.torchserve.host import TorchServe

    server = TorchServe() if host == "torchserve" else KServe()
    stopped = []

    class Group:
        def running(self) -> bool:
            return True

        def stop(self) -> None:
            stopped.append(True)

    def broken_drain() -> None:
        raise RuntimeError("the drain broke")

    server.group = Group()
    monkeypatch.setattr(server, "drain", broken_drain)
    with pytest.raises(RuntimeError, match="the drain broke"):
        server.stop()
    assert stopped == [True] and not server.tmp.exists()


def test_the_worker_config_and_the_kserve_process_settings_travel_whole():
    """One typed record per boundary: what the archive's YAML and the KServe host's settings file carry reads back
    equal, and a key the worker does not know is refused, named."""
    from handlers.config import WorkerConfig
    from handlers.errors import ConfigError
    from runtime.manifest import Manifest
    from serving.kserve.settings import ProcessSettings
    from serving.settings import MODELS, KServeConfig, worker_config
    from tests.conftest import ARTIFACTS

    config = worker_config(MODELS["reconstruct"], Manifest.read(ARTIFACTS))
    assert WorkerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.encoder and config.stats and config.decoder["cpu"][0] == "onnx-int8"
    with pytest.raises(ConfigError, match="unknown settings: batch"):
        WorkerConfig.from_dict(config.to_dict() | {"batch": 4})
    server = ServerConfig(server="kserve", export_store=ARTIFACTS.parent, models=("sample", "traverse"),
                          kserve=KServeConfig(batch_size=1))
    settings = ProcessSettings.of(server, MODELS, 3, Path("/tmp"), None, tmp := Path("/nonexistent/processes.json"))
    back = ProcessSettings.from_json(settings.to_json())
    assert back == settings and back.status_file == str(tmp)
    assert {name: (r.batch_size, r.queue_size, r.worker.store_workers) for name, r in back.routes.items()} == {
        "sample": (1, MODELS["sample"].job_queue_size, 3), "traverse": (1, MODELS["traverse"].job_queue_size, 3)}

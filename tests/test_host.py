"""The launcher's host-side logic without a server: its output copier on a full disk, the worker log's cause line,
the log folder check, gRPC kept on loopback unless asked for, and the key client's one retry."""

from __future__ import annotations

import io
import os
import threading
import urllib.error
from pathlib import Path

import pytest

from serving import client, drain
from serving.errors import ServerError
from serving.logs import RotatingFile, check_writable, copy_output, exception_line
from serving.settings import ServerConfig


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
    properties = ServerConfig(host="0.0.0.0", grpc=grpc).properties(tmp_path).splitlines()
    assert f"grpc_inference_address={address}" in properties
    assert "grpc_management_address=127.0.0.1" in properties


def test_a_request_refused_for_its_key_is_sent_once_more_with_the_key_read_again(monkeypatch):
    keys, sent = iter(["old", "new"]), []

    def get_json(url: str, timeout: float, token: str | None) -> dict:
        sent.append(token)
        if token == "old":
            raise urllib.error.HTTPError(url, 400, 'Bad Request: {"type": "InvalidKeyException"}', {}, io.BytesIO())
        return {"ok": True}

    monkeypatch.setattr(client, "get_json", get_json)
    assert client.http_json("http://x/models", key=lambda: next(keys)) == {"ok": True} and sent == ["old", "new"]

    def bad_request(url: str, timeout: float, token: str | None) -> dict:
        sent.append(token)
        raise urllib.error.HTTPError(url, 400, 'Bad Request: {"type": "BadRequestException"}', {}, io.BytesIO())

    monkeypatch.setattr(client, "get_json", bad_request)
    sent.clear()
    with pytest.raises(urllib.error.HTTPError):  # any other refusal is the answer
        client.http_json("http://x/models", key=lambda: "key")
    assert sent == ["key"]


def test_a_drain_says_how_it_ended(tmp_path):
    """Quiet (nothing queued, no answer for QUIET_SECONDS), timed out with work queued, cut short, API gone."""
    answered = iter(range(3))
    calm = drain.drain(tmp_path / "d1", lambda: (0, next(answered, 2)), 5, threading.Event())
    assert calm.startswith("drained in") and (tmp_path / "d1").exists()
    busy = drain.drain(tmp_path / "d2", lambda: (3, 0), 0.3, threading.Event())
    assert busy == "drain timed out after 0.3 s with 3 request(s) still queued"
    hurry = threading.Event()
    hurry.set()
    assert drain.drain(tmp_path / "d3", lambda: (3, 0), 5, hurry).startswith("drain cut short after 0.0 s")

    def gone() -> tuple[int, float]:
        raise urllib.error.URLError("refused")
    ended = drain.drain(tmp_path / "d4", gone, 5, threading.Event())
    assert ended == "drain ended: the management API no longer answers"

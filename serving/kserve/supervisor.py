"""The KServe host's supervisor: ``processes`` serving processes on one inherited listening socket, each replaced
when it dies, and a status file the health check reads.

It imports what a serving process needs once, then forks each from itself (gunicorn's ``--preload``): a process,
or its replacement, only loads its routes; nothing before the fork starts a thread or touches CUDA. Every process
accepts from the same socket, so while one is gone the others take every new connection; only the requests on the
dead one's own connections are lost. A process says it is ready through a pipe. Before every process has been ready
once, a death ends the host (a failed start is reported, not retried); after that, a dead process is replaced at
once, and a replacement that dies before it is ready is tried again after ``RETRY_PAUSES_S``, then the host gives
up with its exit code. SIGTERM or SIGINT is forwarded to every process (each drains), SIGUSR1 (a roll-out message)
too. The status file (``STATUS_FILE`` in the working directory, JSON, written atomically on each change):
``{"processes": N, "serving": <ready>, "replacing": [{"index", "since" (epoch seconds), "why"}, ...]}``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

STATUS_FILE = "processes.json"
RETRY_PAUSES_S = (1.0, 2.0, 4.0)  # before each new try of a replacement that died before it was ready; then give up
POLL_S = 0.05
Serve = Callable[[int, int], None]  # serve(index, ready_fd): a serving process's work, in the forked child


def exit_reason(code: int) -> str:
    """How a process ended, for the operator: "killed by SIGKILL" or "exit code 3"."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Child:
    """A forked serving process: its pid and, once it has exited, its return code (negative: the signal)."""

    def __init__(self, serve: Serve, index: int, ready_fd: int) -> None:
        """Fork; the child runs ``serve(index, ready_fd)`` and exits (1, with the traceback on stderr, when it
        raises)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        self.returncode: int | None = None
        if self.pid:
            return
        code = 0
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a roll-out message before it can take one: not a death
            serve(index, ready_fd)
        except BaseException:  # noqa: BLE001 - the child must end here, never return into the supervisor
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


@dataclass
class Slot:
    """One serving process's place: the process in it now and how its replacement is going."""

    index: int
    process: Child
    ready_pipe: int  # read end: one byte once the process is ready, end of file when it exits
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    tries: int = 0  # replacements in a row that died before they were ready
    gone_since: float | None = None  # epoch seconds: since when this place has had no ready process
    why: str = ""  # what ended the last process in this place
    retry_at: float | None = None  # monotonic: when the next try starts (a replacement died before it was ready)


class Supervisor:
    """Starts, watches and replaces the serving processes of one host; ``run`` returns the exit code."""

    def __init__(self, serve: Serve, fd: int, processes: int, status_file: Path | None) -> None:
        """``serve(index, ready_fd)``: what each serving process runs; ``fd``: the listening socket it inherits."""
        self.serve, self.fd, self.status_file = serve, fd, status_file
        self.slots: list[Slot] = []
        self.stopping = False
        self.started = False  # every process has been ready once
        try:
            for index in range(processes):
                self.slots.append(self.spawn(index))
        except BaseException:  # a start failed: the ones started go too
            self.kill()
            raise

    def spawn(self, index: int) -> Slot:
        read, write = os.pipe()
        try:
            child = Child(self.serve, index, write)
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        return Slot(index, child, read)

    def forward(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        """Tell every process to drain; nothing is replaced from now on, and the supervisor lets go of the
        socket (it closes once every process has closed its copy)."""
        if not self.stopping:
            self.stopping = True
            os.close(self.fd)
        for slot in self.slots:
            slot.process.send_signal(signal.SIGTERM)

    def relay(self, signum: int = signal.SIGUSR1, frame: object = None) -> None:
        """Pass a roll-out message (SIGUSR1) on to every serving process."""
        for slot in self.slots:
            slot.process.send_signal(signal.SIGUSR1)

    def kill(self) -> None:
        for slot in self.slots:
            slot.process.send_signal(signal.SIGKILL)
            slot.process.wait()

    def say(self, line: str) -> None:
        print(f"kserve supervisor: {line}", flush=True)

    def run(self) -> int:
        """Watch until every process has exited after a stop, or the host gives up; the exit code."""
        code = 0
        self.write_status()
        while any(s.process.poll() is None for s in self.slots) or (not self.stopping and code == 0):
            self.note_ready()
            for slot in self.slots:
                if slot.process.poll() is None or self.stopping or code:
                    continue
                if slot.ready_pipe != -1:  # exited: its pipe is done
                    os.close(slot.ready_pipe)
                    slot.ready_pipe = -1
                if slot.retry_at is None:
                    code = self.ended(slot) or code
                elif time.monotonic() >= slot.retry_at:
                    self.replace(slot)
            if code:
                self.forward()
            time.sleep(POLL_S)
        for slot in self.slots:
            if slot.ready_pipe != -1:
                os.close(slot.ready_pipe)
        if self.status_file is not None:
            self.status_file.unlink(missing_ok=True)
        return code or next((s.process.returncode for s in self.slots if s.process.returncode), 0)

    def note_ready(self) -> None:
        """Mark the processes that said they are ready."""
        pipes = [s.ready_pipe for s in self.slots if s.ready_pipe != -1 and not s.ready]
        readable, _, _ = select.select(pipes, [], [], 0) if pipes else ([], [], [])
        for slot in self.slots:
            if slot.ready_pipe in readable and os.read(slot.ready_pipe, 1):
                slot.ready = True
                if slot.gone_since is not None:
                    self.say(f"process {slot.index} is back (pid {slot.process.pid}), "
                             f"{time.time() - slot.gone_since:.1f} s after it went")
                slot.tries, slot.gone_since, slot.why = 0, None, ""
                self.write_status()
        self.started = self.started or all(s.ready for s in self.slots)

    def ended(self, slot: Slot) -> int:
        """A process exited on its own: replace it (or plan the next try); the host's exit code when it gives up."""
        code, lived = slot.process.returncode, time.monotonic() - slot.started
        slot.why = f"{exit_reason(code)} after {lived:.1f} s"
        if not self.started:
            self.say(f"process {slot.index} (pid {slot.process.pid}) ended before the host was ready: {slot.why}")
            return code or 1
        if slot.ready:  # it served: replace it now
            slot.gone_since = time.time()
            self.say(f"process {slot.index} (pid {slot.process.pid}) ended ({slot.why}): starting a replacement; "
                     f"the other processes go on serving")
            self.replace(slot)
            return 0
        if slot.tries >= len(RETRY_PAUSES_S):
            self.say(f"process {slot.index}: {slot.tries + 1} replacements in a row ended before they were ready "
                     f"(the last: {slot.why}): giving up")
            return code or 1
        slot.retry_at = time.monotonic() + RETRY_PAUSES_S[slot.tries]
        self.say(f"process {slot.index}'s replacement ended before it was ready ({slot.why}): trying again in "
                 f"{RETRY_PAUSES_S[slot.tries]:g} s")
        return 0

    def replace(self, slot: Slot) -> None:
        if self.stopping:
            return
        fresh = self.spawn(slot.index)
        fresh.tries = slot.tries + (0 if slot.ready else 1)
        fresh.gone_since, fresh.why = slot.gone_since, slot.why
        self.slots[slot.index] = fresh
        self.write_status()

    def write_status(self) -> None:
        if self.status_file is None:
            return
        status = {"processes": len(self.slots), "serving": sum(s.ready for s in self.slots),
                  "replacing": [{"index": s.index, "since": s.gone_since, "why": s.why}
                                for s in self.slots if s.gone_since is not None]}
        tmp = self.status_file.with_name(f".{self.status_file.name}.tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, self.status_file)


def supervise(serve: Serve, fd: int, processes: int, status_file: Path | None) -> int:
    """Run ``processes`` serving processes (``serve``) on socket ``fd`` until a stop; the exit code."""
    try:
        supervisor = Supervisor(serve, fd, processes, status_file)
    except BaseException:
        os.close(fd)
        raise
    signal.signal(signal.SIGTERM, supervisor.forward)
    signal.signal(signal.SIGINT, supervisor.forward)
    signal.signal(signal.SIGUSR1, supervisor.relay)
    try:
        return supervisor.run()
    except BaseException:
        supervisor.kill()
        raise
    finally:
        if not supervisor.stopping:
            os.close(fd)

"""TorchServe's process group: the ``torchserve`` wrapper started as a session leader (its pid is the group id,
so the JVM and every worker can be signalled together), the watchdog that stops the group once the launcher is
gone (``serving/watchdog.py``), and the stop sequence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from serving.watchdog import signal_group

ROOT = Path(__file__).resolve().parent.parent
JVM_STOP_S = 30.0  # how long the JVM gets to stop its workers after SIGTERM


class ProcessGroup:
    """One started command in a session of its own, with its watchdog. ``stop`` is safe to call more than once."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path, leftovers: list[Path] = (),
                 pass_fds: tuple[int, ...] = (), forwards: bool = False, stop_s: float = JVM_STOP_S) -> None:
        """``leftovers``: what the watchdog removes after stopping the group (the launcher's temp dir, its drain
        mark), when the launcher could not; ``pass_fds``: file descriptors the command inherits; ``forwards``: the
        command passes SIGTERM on to its children itself (the KServe supervisor; TorchServe's wrapper does not);
        ``stop_s``: how long a stop waits after SIGTERM before SIGKILL."""
        self.forwards, self.stop_s = forwards, stop_s
        self.process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True, pass_fds=pass_fds)
        read, self._watchdog_pipe = os.pipe()  # the watchdog acts when the write end closes
        try:
            self.watchdog = subprocess.Popen([sys.executable, "-m", "serving.watchdog", str(self.process.pid),
                                              *map(str, leftovers)], stdin=read, cwd=ROOT, start_new_session=True)
        except BaseException:
            os.close(self._watchdog_pipe)
            self.kill()
            raise
        finally:
            os.close(read)

    @property
    def pid(self) -> int:
        """The wrapper's pid: the group id."""
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def owns(self, pid: int) -> bool:
        """Whether process ``pid`` is in this group."""
        try:
            return os.getpgid(pid) == self.process.pid
        except ProcessLookupError:
            return False

    def stop_jvm(self) -> None:
        """SIGTERM to the wrapper's children alone (the JVM: its shutdown hook closes the listeners and stops the
        workers; the wrapper exits with it), or to the leader when it ``forwards``. After ``stop_s``, or with no
        child found, the group gets SIGKILL."""
        try:
            leader = psutil.Process(self.process.pid)
            targets = [leader] if self.forwards else leader.children()
        except psutil.Error:
            targets = []
        for target in targets:
            target.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=self.stop_s if targets else 0)
        except subprocess.TimeoutExpired:
            signal_group(self.process.pid, signal.SIGKILL, 10)

    def kill(self) -> None:
        """SIGKILL whatever is left of the group (workers that outlived the JVM are still in it) and reap it."""
        signal_group(self.process.pid, signal.SIGKILL, 10)
        self.process.wait()

    def stop(self) -> None:
        """Stop the JVM if it runs, kill the rest of the group, and let the watchdog go."""
        try:
            if self.running():
                self.stop_jvm()
            self.kill()
        finally:
            if self._watchdog_pipe is not None:  # the watchdog finds the group gone and exits
                os.close(self._watchdog_pipe)
                self._watchdog_pipe = None
                try:
                    self.watchdog.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.watchdog.kill()

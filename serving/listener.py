"""Close TorchServe's inference listener while its connections stay open, so that a stop loses no request.

TorchServe's JVM, on SIGTERM, closes its listening sockets and every client connection in the same instant: a
request read from a connection but not yet answered is lost, and a client that keeps sending always has one. So
the launcher closes the door first, from outside the JVM (Linux only): it takes a duplicate of the JVM's
listening socket (``pidfd_getfd``, allowed for a process's own descendants), attaches a socket filter that drops
new connection attempts, waits until Netty has accepted the connections already made, then shuts the socket down.
From then on a new connection is refused (a connection attempt made during those few milliseconds is refused
after its first SYN retransmission, about a second later), while the open connections are answered as usual: 200
for work taken up before the drain, 503 ``shutting_down`` (which closes the connection) for the rest.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import time

import psutil

SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture (the unified syscall table)
SO_ATTACH_FILTER = 26
BPF_RET_K = 0x06  # classic BPF: "return k"; k = 0 drops the packet
ACCEPT_WAIT_S = 0.1  # for Netty to accept the connections already in the listener's queue


def listening_socket(port: int, processes: list[psutil.Process]) -> tuple[int, int] | None:
    """(pid, fd) of the socket listening on TCP ``port`` among ``processes``, or None."""
    for process in processes:
        try:  # psutil 6 renamed Process.connections to net_connections; KServe pins psutil < 6
            connections = getattr(process, "net_connections", None) or process.connections
            for conn in connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.fd != -1:
                    return process.pid, conn.fd
        except psutil.Error:
            continue
    return None


def duplicate(pid: int, fd: int) -> socket.socket:
    """This process's own handle on process ``pid``'s socket ``fd`` (the same socket, not a copy)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        new = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if new < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(pidfd)
    return socket.socket(fileno=new)


def drop_new_connections(sock: socket.socket) -> None:
    """Attach a one-instruction socket filter that drops every packet reaching the listener (new SYNs)."""
    program = ctypes.create_string_buffer(struct.pack("HBBI", BPF_RET_K, 0, 0, 0))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HP", 1, ctypes.addressof(program)))


def close_listener(root_pid: int, port: int) -> str | None:
    """Stop the listener on ``port`` of process ``root_pid`` or one of its descendants (the JVM under TorchServe's
    wrapper) without touching its connections. Returns None when done, else why it could not be done (the stop
    then goes on without it)."""
    try:
        root = psutil.Process(root_pid)
        found = listening_socket(port, [root, *root.children(recursive=True)])
    except psutil.Error as e:
        return f"the server's processes could not be read ({e})"
    if found is None:
        return f"no process of the server listens on port {port}"
    try:
        sock = duplicate(*found)
    except (OSError, AttributeError) as e:  # AttributeError: no os.pidfd_open (not Linux)
        return f"its listening socket could not be reached ({e}; pidfd_getfd needs Linux 5.6 and ptrace rights)"
    with sock:
        try:
            drop_new_connections(sock)
            time.sleep(ACCEPT_WAIT_S)
            sock.shutdown(socket.SHUT_RDWR)
        except OSError as e:
            return f"its listening socket could not be shut ({e})"
    return None

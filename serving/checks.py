"""What the launcher checks before a host starts, so that a bad export or a busy port fails at once, named
(TorchServe's archives: ``serving/torchserve/archive.py``, ``check_archive``)."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

from runtime.errors import ManifestError
from runtime.manifest import Manifest
from serving.errors import ServerError
from serving.settings import ServerConfig

PORT_ROLES = {"inference_port": "inference", "management_port": "management",
              "torchserve_metrics_port": "TorchServe metrics", "metrics_port": "handler metrics",
              "grpc_inference_port": "gRPC inference", "grpc_management_port": "gRPC management",
              "explorer_port": "explorer page"}


def check_export(folder: Path) -> None:
    """Raise ServerError unless ``folder`` is an export whose every artifact is there with the SHA-256 its manifest
    gives it (what the KServe host serves from; TorchServe's archives are checked by ``check_archive``)."""
    try:
        manifest = Manifest.read(folder)
    except ManifestError as e:
        raise ServerError(str(e)) from None
    for artifact in manifest.artifacts.values():
        path = folder / artifact.file
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as e:
            raise ServerError(f"{path}: cannot be read ({e.strerror}); re-run `make export`") from None
        if digest != artifact.sha256:
            raise ServerError(f"{path}: damaged (SHA-256 {digest[:16]}..., its manifest says "
                              f"{artifact.sha256[:16]}...); re-run `make export` or restore it from git")


def listen_host(config: ServerConfig, field: str) -> str:
    """The address the server listens on for the port ``field``: management and explorer stay on loopback."""
    grpc_on_loopback = field == "grpc_inference_port" and not config.torchserve.grpc
    if "management" in field or field == "explorer_port" or grpc_on_loopback:
        return "127.0.0.1"
    return config.metrics_host if "metrics" in field else config.host


def check_ports(config: ServerConfig, fields: tuple[str, ...] = tuple(PORT_ROLES)) -> None:
    """Raise ServerError naming the first of the server's ports (``fields``) that something already listens on."""
    for field in fields:
        role = PORT_ROLES[field]
        port, host = config.ports()[field], listen_host(config, field)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is free
            try:
                probe.bind((host, port))
            except OSError as e:
                raise ServerError(f"port {port} ({role}, on {host}) is in use ({e.strerror}): another server "
                                  f"is running there, or pick free ports (--{field.replace('_', '-')} ...)") from None

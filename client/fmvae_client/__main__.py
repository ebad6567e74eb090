"""The client for people: ``python -m fmvae_client [--url URL] [--key-file F] <operation> [--field value ...] -o OUT``.

Each operation of ``Client`` is a command with its parameters as flags (``--class`` for ``class_``; a list, point
or object as JSON: ``--around '{"seed": 3}'``, ``--seeds '[1, 2]'``; an image flag takes PNG paths). The answer is
written to ``-o`` as served (PNG, GIF, npy or JSON; the format follows the file's extension unless ``--format``
says otherwise), or printed when it is JSON and no ``-o`` is given. ``encode-folder DIR -o latents.npz`` encodes
every PNG of a folder in batches, with a progress bar, and writes the posterior means and log-variances with the
file names. Errors name the field the service refused and the request ID; exit status 1.

    python -m fmvae_client sample --n 16 --seed 1 -o samples.png
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fmvae_client.client import DEFAULT_URL, Client, Operations, Response
from fmvae_client.errors import ClientError

OPERATIONS = [name for name, _ in inspect.getmembers(Operations, inspect.isfunction) if not name.startswith("_")]
FORMATS = {".png": "png", ".gif": "gif", ".npy": "npy", ".json": "json"}
IMAGE_FLAGS = {"images"}  # flags whose values are PNG paths
ENCODE_BATCH = 256  # images per encode request (the service's limit)


def flag_value(text: str) -> Any:
    """A flag's value: JSON when it parses as JSON, else the text itself (a class name, a method)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m fmvae_client", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--url", default=os.environ.get("FMVAE_URL", DEFAULT_URL), help="the service (env FMVAE_URL)")
    cli.add_argument("--key-file", default=os.environ.get("FMVAE_KEY_FILE"),
                     help="the service's key file, token auth on (env FMVAE_KEY_FILE)")
    cli.add_argument("--request-id", help="sent as X-Request-ID (default: a new one)")
    commands = cli.add_subparsers(dest="command", required=True)
    for name in OPERATIONS:
        method = getattr(Operations, name)
        sub = commands.add_parser(name, help=(method.__doc__ or "").strip().splitlines()[0])
        for parameter in list(inspect.signature(method).parameters.values())[1:]:
            if parameter.name == "request_id":
                continue
            field = parameter.name.rstrip("_")
            kind = {"nargs": "+"} if field in IMAGE_FLAGS else {"type": flag_value}
            sub.add_argument(f"--{field.replace('_', '-')}", dest=parameter.name, **kind,
                             required=parameter.default is inspect.Parameter.empty)
        sub.add_argument("-o", "--out", type=Path, help="write the answer here (else print a JSON answer)")
    folder = commands.add_parser("encode-folder", help="encode every PNG of a folder, with a progress bar")
    folder.add_argument("folder", type=Path)
    folder.add_argument("--route", default="encode")
    folder.add_argument("-o", "--out", type=Path, required=True, help=".npz with names, mu and logvar")
    return cli


def progress(done: int, total: int, stream: Any = sys.stderr) -> None:
    """A one-line bar on the terminal: ``[#####.....] 120/256``."""
    width = 30
    filled = width * done // max(total, 1)
    stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        stream.write("\n")
    stream.flush()


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` to ``path`` whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


class RawClient(Client):
    """A client whose operations give the whole ``Response`` (the answer's bytes as served)."""

    def _operation(self, route: str, body: dict[str, Any], request_id: str | None) -> Response:
        return self.call(route, body, request_id)


def run_operation(client: RawClient, name: str, args: argparse.Namespace) -> int:
    """One operation's call; its answer written to ``--out`` or printed."""
    method = getattr(client, name)
    values = {p: getattr(args, p) for p in inspect.signature(method).parameters
              if p != "request_id" and getattr(args, p, None) is not None}
    if args.out is not None and "format" not in values and args.out.suffix.lower() in FORMATS:
        values["format"] = FORMATS[args.out.suffix.lower()]
    if "images" in values:
        values["images"] = [Path(p) for p in values["images"]]
    response = method(**values, request_id=args.request_id)
    if args.out is None:
        if response.content_type != "application/json":
            print(f"error: the answer is {response.content_type}: give -o FILE", file=sys.stderr)
            return 1
        print(json.dumps(response.value(), indent=2))
    else:
        write_atomically(args.out, response.body)
        print(f"{args.out}: {len(response.body)} bytes, {response.content_type} (request {response.request_id})",
              file=sys.stderr)
    return 0


def encode_folder(client: RawClient, folder: Path, route: str, out: Path,
                  report: Callable[[int, int], None] = progress) -> int:
    """Every ``*.png`` of ``folder`` encoded in batches; ``out`` holds names, mu and logvar."""
    paths = sorted(folder.glob("*.png"))
    if not paths:
        print(f"error: {folder}: no .png files", file=sys.stderr)
        return 1
    mu, logvar = [], []
    report(0, len(paths))
    for start in range(0, len(paths), ENCODE_BATCH):
        batch: Sequence[Path] = paths[start:start + ENCODE_BATCH]
        answer = client.encode(list(batch), format="json", route=route).value()
        mu += answer["mu"]
        logvar += answer["logvar"]
        report(start + len(batch), len(paths))
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".npz", delete=False) as tmp:
        np.savez(tmp, names=np.array([p.name for p in paths]), mu=np.array(mu), logvar=np.array(logvar))
    os.replace(tmp.name, out)
    print(f"{out}: {len(paths)} images encoded", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with RawClient(args.url, key_file=args.key_file) as client:
            if args.command == "encode-folder":
                return encode_folder(client, args.folder, args.route, args.out)
            return run_operation(client, args.command, args)
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

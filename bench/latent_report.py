"""Do the latent-space operations do what they say? ``python -m bench.latent_report [--per-class 1000]``.

Everything goes through the served API (a TorchServe with every route, archives built from
``model_store/export`` and the current code); the project's classifier judges the images:

- ``sample`` with ``class``: the share of ``--per-class`` images the classifier labels as the asked class,
  beside its accuracy on the real test images of that class (the ceiling);
- ``edit`` at strength 1 from ``--edits`` test images of each class (encoded by ``encode``) to every class:
  the 10x10 matrix of the share labelled as the target class;
- ``reconstruct`` over the whole test set: the mean recon error against the evaluation report's recon term;
- ``interpolate``: the smoothness (mean squared difference of successive images) of lerp, slerp and
  constant_norm paths between the same ``--pairs`` pairs of prior samples.

Writes ``OUT/latent_report.{json,md}`` and the figures (PNGs) into ``--figures`` (default docs/latent/).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from runtime import artifacts
from runtime.images import png_bytes, tile, to_uint8
from serving import archive
from serving.server import TorchServe
from serving.settings import MODELS, ServerConfig
from training import classifier, data

EVALUATION = Path("model_store/release/report.json")
EDIT_TARGETS = {0: 6, 1: 3, 2: 4, 3: 1, 4: 2, 5: 7, 6: 0, 7: 9, 8: 2, 9: 7}  # each class toward a neighbour


class Client:
    """POSTs to one server, keep-alive per thread."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, operation: str, body: dict) -> bytes:
        request = urllib.request.Request(f"{self.url}/predictions/{operation}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.read()

    def npy(self, operation: str, body: dict) -> np.ndarray:
        return np.load(io.BytesIO(self(operation, body | {"format": "npy"})))

    def json(self, operation: str, body: dict) -> dict:
        return json.loads(self(operation, body | {"format": "json"}))


def b64png(pixels: np.ndarray) -> str:
    return base64.b64encode(png_bytes(pixels)).decode()


def labels(clf: classifier.Classifier, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return clf.predict(torch.from_numpy(images[:, None].astype(np.float32))).numpy()


def class_samples(client: Client, clf: classifier.Classifier, test: data.Split, per_class: int) -> dict:
    """Per class: share of class-conditional samples labelled as that class, and the classifier's test accuracy."""
    rows = {}
    truth = labels(clf, test.images.astype(np.float32) / 255)
    for label, name in enumerate(data.CLASS_NAMES):
        images = np.concatenate([client.npy("sample", {"n": min(250, per_class - i), "seed": 1000 * label + i,
                                                       "class": label}) for i in range(0, per_class, 250)])
        members = test.labels == label
        rows[name] = {"samples_labelled_as_class": float((labels(clf, images) == label).mean()),
                      "classifier_test_accuracy": float((truth[members] == label).mean())}
    return rows


def edit_matrix(client: Client, clf: classifier.Classifier, test: data.Split, per_class: int) -> list[list[float]]:
    """[source][target]: share of edited test images (strength 1) labelled as the target class."""
    matrix = []
    with ThreadPoolExecutor(8) as pool:
        for source in range(10):
            texts = [b64png(p) for p in test.images[test.labels == source][:per_class]]
            starts = client.json("encode", {"images": texts})["mu"]
            row = []
            for target in range(10):
                bodies = [{"start": {"latent": z}, "from": source, "to": target} for z in starts]
                edited = np.concatenate(list(pool.map(lambda b: client.npy("edit", b), bodies)))
                row.append(float((labels(clf, edited) == target).mean()))
            matrix.append(row)
    return matrix


def reconstruction(client: Client, test: data.Split, samples: int) -> dict:
    """Mean recon error and KL over the test set, through the API, against the evaluation report's terms."""
    errors, kls = [], []
    for i in range(0, len(test.images), 250):
        reply = client.json("reconstruct", {"images": [b64png(p) for p in test.images[i:i + 250]],
                                            "samples": samples, "seed": i})
        errors += reply["recon_error"]
        kls += reply["kl"]
    report = json.loads(EVALUATION.read_text())["test"]
    return {"images": len(errors), "samples_per_image": samples, "recon_error": float(np.mean(errors)),
            "evaluation_recon": report["recon"], "kl": float(np.mean(kls)), "evaluation_kl": report["kl"]}


def smoothness(client: Client, pairs: int) -> dict:
    """Mean and spread of each method's path smoothness over the same endpoint pairs (seeds)."""
    found = {}
    for method in ("lerp", "slerp", "constant_norm"):
        values = [client.json("interpolate", {"seeds": [2 * k, 2 * k + 1], "steps": 10, "method": method})["smoothness"]
                  for k in range(pairs)]
        found[method] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return found


def save_png(path: Path, pixels: np.ndarray, scale: int = 2) -> None:
    path.write_bytes(png_bytes(np.kron(pixels, np.ones((scale, scale), dtype=np.uint8))))


def figures(client: Client, test: data.Split, out: Path) -> list[str]:
    """The README's pictures of the operations, from the API's own png answers where it has one."""
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def grid(name: str, images: np.ndarray, cols: int) -> None:
        save_png(out / name, tile(to_uint8(images), cols))
        written.append(name)

    grid("sample_by_class.png", np.concatenate([client.npy("sample", {"n": 10, "seed": 3, "class": c})
                                                for c in range(10)]), 10)
    grid("edit_sneaker_to_boot.png", client.npy("edit", {"start": {"class": 7}, "from": 7, "to": 9,
                                                         "strength": [0, 0.25, 0.5, 0.75, 1, 1.25]}), 6)
    strips = [client.npy("edit", {"start": {"image": b64png(test.images[test.labels == source][0])}, "from": source,
                                  "to": target, "strength": [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5]})
              for source, target in EDIT_TARGETS.items()]
    grid("edit_strips.png", np.concatenate(strips), 7)
    start = {"image": b64png(test.images[test.labels == 0][1])}
    grid("traverse_from_image.png", client.npy("traverse", {"start": start, "steps": 9}).reshape(-1, 28, 28), 9)
    analogies = [({"class": 7}, {"class": 9}, {"class": 5}), ({"class": 0}, {"class": 6}, {"class": 2}),
                 ({"class": 3}, {"class": 1}, {"seed": 4})]
    grid("analogy.png", np.concatenate([client.npy("analogy", {"a": a, "b": b, "c": c}) for a, b, c in analogies]), 4)
    grid("walk.png", client.npy("walk", {"start": {"class": 8}, "seed": 5, "steps": 16, "step_size": 0.4,
                                         "project": True}), 16)
    (out / "walk.gif").write_bytes(client("walk", {"start": {"class": 8}, "seed": 5, "steps": 16, "step_size": 0.4,
                                                   "project": True, "format": "gif"}))
    written.append("walk.gif")
    return written


def markdown(report: dict) -> str:
    names = data.CLASS_NAMES
    lines = ["sample with class: share of the samples the classifier labels as the asked class, beside its accuracy "
             "on that class's real test images (the ceiling).", "",
             "| class | samples labelled as the class | classifier on real test images |", "| --- | --- | --- |"]
    lines += [f"| {name} | {r['samples_labelled_as_class']:.1%} | {r['classifier_test_accuracy']:.1%} |"
              for name, r in report["class_samples"].items()]
    lines += ["", f"edit at strength 1, {report['edits_per_class']} test images per source class: share labelled as "
              "the target (rows: from, columns: to).", "",
              "| from \\ to | " + " | ".join(names) + " |", "| --- " * 11 + "|"]
    lines += [f"| {names[i]} | " + " | ".join(f"{v:.0%}" for v in row) + " |" for i, row in enumerate(report["edits"])]
    r = report["reconstruction"]
    lines += ["", f"reconstruct over {r['images']:,} test images ({r['samples_per_image']} posterior draws each): "
              f"recon error {r['recon_error']:.2f} nats (evaluation report: {r['evaluation_recon']:.2f}, "
              f"difference {r['recon_error'] - r['evaluation_recon']:+.2f}); KL {r['kl']:.2f} "
              f"(evaluation: {r['evaluation_kl']:.2f}).", "",
              f"interpolate, {report['pairs']} pairs of prior samples, 10 steps: smoothness (mean squared difference "
              "of successive images, lower is smoother)", "", "| method | mean | std |", "| --- | --- | --- |"]
    lines += [f"| {m} | {v['mean']:.5f} | {v['std']:.5f} |" for m, v in report["smoothness"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.latent_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=artifacts.DEFAULT_DIR)
    parser.add_argument("--per-class", type=int, default=1000, help="class-conditional samples per class")
    parser.add_argument("--edits", type=int, default=100, help="test images per source class for the edit matrix")
    parser.add_argument("--samples", type=int, default=16, help="posterior draws per image for reconstruct")
    parser.add_argument("--pairs", type=int, default=100, help="endpoint pairs for the smoothness comparison")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/latent-report"))
    parser.add_argument("--figures", type=Path, default=Path("docs/latent"))
    args = parser.parse_args(argv)
    clf, _ = classifier.load(classifier.DEFAULT_PATH)
    test = data.load(args.data_dir).test
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as store:
        archive.build_store(args.artifacts.parent, Path(store))
        with TorchServe(ServerConfig(model_store=Path(store), models=tuple(MODELS)).with_free_ports()) as server:
            client = Client(server.url)
            report = {"per_class": args.per_class, "edits_per_class": args.edits, "pairs": args.pairs,
                      "class_samples": class_samples(client, clf, test, args.per_class),
                      "edits": edit_matrix(client, clf, test, args.edits),
                      "reconstruction": reconstruction(client, test, args.samples),
                      "smoothness": smoothness(client, args.pairs),
                      "figures": figures(client, test, args.figures)}
    report["seconds"] = time.monotonic() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latent_report.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "latent_report.md").write_text(text + "\n")
    print(text)
    print(f"figures in {args.figures}: {', '.join(report['figures'])}; {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()

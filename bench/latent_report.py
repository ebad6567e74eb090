"""Do the latent-space operations do what they say? ``python -m bench.latent_report [--per-class 1000]``.

Everything goes through the served API (a TorchServe with every route, archives built from
``model_store/export`` and ``model_store/export-2d`` and the current code); the project's classifier judges the
images:

- ``sample`` with ``class`` (and ``sample2d``): the share of ``--per-class`` images the classifier labels as the
  asked class, beside its accuracy on the real test images of that class (the ceiling), and their diversity: the
  mean pairwise distance of 200 samples over that of 200 real test images of the class (a sampler that collapses
  onto a few training images scores low);
- ``edit`` (and ``edit2d``) from ``--edits`` test images of each class (encoded by ``encode``) to every other
  class, at the default strength ("auto") and at the class-mean strength 1: the share labelled as the target
  class per pair, and how much of the input an edit keeps (mean pixel distance from the edit to the input,
  against the input's distance to the target class's mean test image);
- ``sample`` by temperature: sharpness (mean absolute pixel gradient) and the classifier's confidence (its mean
  top softmax probability) of prior samples at each temperature, with a figure;
- ``reconstruct`` over the whole test set: the mean recon error against the evaluation report's recon term;
- ``interpolate``: the smoothness (mean squared difference of successive images) of lerp, slerp and
  constant_norm paths between the same ``--pairs`` pairs of prior samples.

Writes ``OUT/latent_report.{json,md}`` and the figures (PNGs) into ``--figures`` (default docs/latent/).
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib
import numpy as np
import torch
from fmvae_client import Client

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from runtime import artifacts
from runtime.images import png_bytes, tile, to_uint8
from serving.routes import EXPORT_2D, ROUTES, example
from serving.settings import MODELS, ServerConfig, TorchServeConfig
from serving.torchserve import archive
from serving.torchserve.host import TorchServe
from training import classifier, data

EVALUATION = Path("model_store/release/report.json")
EDIT_TARGETS = {0: 6, 1: 3, 2: 4, 3: 1, 4: 2, 5: 7, 6: 0, 7: 9, 8: 2, 9: 7}  # each class toward a neighbour


class Api:
    """The report's calls through the client package (kept-alive connections shared by the report's threads):
    answers as served, as npy arrays or as JSON."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def __call__(self, operation: str, body: dict) -> bytes:
        return self.client.call(operation, body).body

    def npy(self, operation: str, body: dict) -> np.ndarray:
        return self.client.call(operation, body | {"format": "npy"}).value()

    def json(self, operation: str, body: dict) -> dict:
        return self.client.call(operation, body | {"format": "json"}).value()


def b64png(pixels: np.ndarray) -> str:
    return base64.b64encode(png_bytes(pixels)).decode()


def labels(clf: classifier.Classifier, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return clf.predict(torch.from_numpy(images[:, None].astype(np.float32))).numpy()


def confidence(clf: classifier.Classifier, images: np.ndarray) -> float:
    """The classifier's mean top softmax probability over images (N, 28, 28)."""
    with torch.no_grad():
        return float(torch.softmax(clf(torch.from_numpy(images[:, None].astype(np.float32))), 1).max(1)[0].mean())


def spread(images: np.ndarray, count: int = 200) -> float:
    """Mean pairwise pixel distance of the first ``count`` images (N, 28, 28) in [0, 1]."""
    flat = images[:count].reshape(min(count, len(images)), -1).astype(np.float64)
    distances = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
    return float(distances[np.triu_indices(len(flat), 1)].mean())


def class_samples(client: Api, clf: classifier.Classifier, test: data.Split, per_class: int,
                  route: str = "sample") -> dict:
    """Per class: share of class-conditional samples labelled as that class, the classifier's test accuracy on the
    class, and the samples' diversity over the real images'."""
    rows = {}
    truth = labels(clf, test.images.astype(np.float32) / 255)
    for label, name in enumerate(data.CLASS_NAMES):
        images = np.concatenate([client.npy(route, {"n": min(250, per_class - i), "seed": 1000 * label + i,
                                                    "class": label}) for i in range(0, per_class, 250)])
        members = test.labels == label
        real = test.images[members].astype(np.float64) / 255
        rows[name] = {"samples_labelled_as_class": float((labels(clf, images) == label).mean()),
                      "classifier_test_accuracy": float((truth[members] == label).mean()),
                      "diversity_over_real": spread(images) / spread(real)}
    return rows


def edits(client: Api, clf: classifier.Classifier, test: data.Split, per_class: int, route: str = "edit",
          encoder: str = "encode") -> dict:
    """Per strength ("auto", the default, and 1): [source][target] share labelled as the target (the diagonal
    None), and the mean distance of the edits to their inputs against the inputs' to the targets' mean images."""
    pixels = test.images.astype(np.float64) / 255
    mean_images = np.stack([pixels[test.labels == c].mean(0) for c in range(10)])
    found = {}
    with ThreadPoolExecutor(8) as pool:
        starts = {source: client.json(encoder, {"images": [b64png(p) for p in
                                                         test.images[test.labels == source][:per_class]]})["mu"]
                  for source in range(10)}
        for strength in ("auto", 1):
            matrix, kept, target_distance = [], [], []
            for source in range(10):
                inputs = pixels[test.labels == source][:per_class]
                row = []
                for target in range(10):
                    if target == source:
                        row.append(None)
                        continue
                    bodies = [{"start": {"latent": z}, "from": source, "to": target, "strength": strength}
                              for z in starts[source]]
                    edited = np.concatenate(list(pool.map(lambda b: client.npy(route, b), bodies)))
                    row.append(float((labels(clf, edited) == target).mean()))
                    kept.append(np.sqrt(((edited - inputs) ** 2).sum((1, 2))).mean())
                    target_distance.append(np.sqrt(((inputs - mean_images[target]) ** 2).sum((1, 2))).mean())
                matrix.append(row)
            landed = [v for row in matrix for v in row if v is not None]
            found[str(strength)] = {"matrix": matrix, "mean": float(np.mean(landed)), "worst": float(min(landed)),
                                    "distance_to_input": float(np.mean(kept)),
                                    "input_to_target_mean_image": float(np.mean(target_distance))}
    return found


def route_latency(client: Api, repeats: int = 100) -> dict:
    """Per route, the p50 and p95 (ms) of its OpenAPI example, sent ``repeats`` times one after another."""
    found = {}
    for name, route in ROUTES.items():
        body = example(route.operation)
        if route.export == EXPORT_2D and "latents" in body:  # the examples' latents are the 64-d model's
            body = body | {"latents": [latent[:2] for latent in body["latents"]]}
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            client(name, body)
            times.append((time.perf_counter() - start) * 1e3)
        found[name] = {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}
    return found


TEMPERATURES = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def temperature_study(client: Api, clf: classifier.Classifier, n: int = 500) -> dict:
    """Per temperature, of ``n`` prior samples: sharpness (mean absolute gradient between neighbouring pixels) and
    the classifier's confidence."""
    rows = {}
    for t in TEMPERATURES:
        images = np.concatenate([client.npy("sample", {"n": 250, "seed": 77 + i, "temperature": t})
                                 for i in range(0, n, 250)])
        sharpness = (np.abs(np.diff(images, axis=1)).mean() + np.abs(np.diff(images, axis=2)).mean()) / 2
        rows[str(t)] = {"sharpness": float(sharpness), "classifier_confidence": confidence(clf, images)}
    return rows


def reconstruction(client: Api, test: data.Split, samples: int) -> dict:
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


def smoothness(client: Api, pairs: int) -> dict:
    """Mean and spread of each method's path smoothness over the same endpoint pairs (seeds)."""
    found = {}
    for method in ("lerp", "slerp", "constant_norm"):
        values = [client.json("interpolate", {"seeds": [2 * k, 2 * k + 1], "steps": 10, "method": method})["smoothness"]
                  for k in range(pairs)]
        found[method] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return found


def save_png(path: Path, pixels: np.ndarray, scale: int = 2) -> None:
    path.write_bytes(png_bytes(np.kron(pixels, np.ones((scale, scale), dtype=np.uint8))))


def figures(client: Api, test: data.Split, out: Path) -> list[str]:
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
    grid("edit_auto.png", np.concatenate([client.npy("edit", {"start": {"image": b64png(image)}, "to": target})
                                          for source, target in EDIT_TARGETS.items()
                                          for image in test.images[test.labels == source][:1]]), 10)
    grid("temperature.png", np.concatenate([client.npy("sample", {"n": 10, "seed": 11, "temperature": t})
                                            for t in TEMPERATURES]), 10)
    grid("walk.png", client.npy("walk", {"start": {"class": 8}, "seed": 5, "steps": 16, "step_size": 0.4,
                                         "project": True}), 16)
    (out / "walk.gif").write_bytes(client("walk", {"start": {"class": 8}, "seed": 5, "steps": 16, "step_size": 0.4,
                                                   "project": True, "format": "gif"}))
    written.append("walk.gif")
    return written


def temperature_figure(study: dict, path: Path) -> None:
    """Sharpness and classifier confidence against temperature, one PNG."""
    temperatures = [float(t) for t in study]
    fig, left = plt.subplots(figsize=(6, 3.2), dpi=100)
    left.plot(temperatures, [r["sharpness"] for r in study.values()], "o-", color="tab:blue")
    left.set_xlabel("temperature")
    left.set_ylabel("sharpness (mean |pixel gradient|)", color="tab:blue")
    right = left.twinx()
    right.plot(temperatures, [r["classifier_confidence"] for r in study.values()], "s-", color="tab:orange")
    right.set_ylabel("classifier confidence", color="tab:orange")
    left.set_title("prior samples by temperature (500 each)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def class_table(rows: dict) -> list[str]:
    lines = ["| class | samples labelled as the class | classifier on real test images | target (90% of it) | "
             "diversity / real |", "| --- | --- | --- | --- | --- |"]
    return lines + [f"| {name} | {r['samples_labelled_as_class']:.1%} | {r['classifier_test_accuracy']:.1%} | "
                    f"{0.9 * r['classifier_test_accuracy']:.1%} | {r['diversity_over_real']:.0%} |"
                    for name, r in rows.items()]


def edit_tables(found: dict, per_class: int) -> list[str]:
    names, lines = data.CLASS_NAMES, []
    for strength, r in found.items():
        title = 'the default strength "auto"' if strength == "auto" else f"strength {strength} (class means)"
        lines += ["", f"edit at {title}, {per_class} test images per source class: share labelled as the target "
                  f"(rows: from, columns: to); mean {r['mean']:.1%} over the 90 pairs, worst pair {r['worst']:.0%}; "
                  f"an edit is {r['distance_to_input']:.2f} from its input on average, the input "
                  f"{r['input_to_target_mean_image']:.2f} from the target class's mean image.", "",
                  "| from \\ to | " + " | ".join(names) + " |", "| --- " * 11 + "|"]
        lines += [f"| {names[i]} | " + " | ".join("-" if v is None else f"{v:.0%}" for v in row) + " |"
                  for i, row in enumerate(r["matrix"])]
    return lines


def markdown(report: dict) -> str:
    lines = ["sample with class: share of the samples the classifier labels as the asked class, beside its accuracy "
             "on that class's real test images (the ceiling), and the samples' diversity (mean pairwise distance of "
             "200) over that of 200 real test images of the class.", "", *class_table(report["class_samples"])]
    lines += edit_tables(report["edits"], report["edits_per_class"])
    lines += ["", "The 2-d model (sample2d, edit2d):", "", *class_table(report["class_samples_2d"])]
    lines += edit_tables(report["edits_2d"], report["edits_per_class"])
    lines += ["", "sample by temperature, 500 prior samples each:", "",
              "| temperature | sharpness | classifier confidence |", "| --- | --- | --- |"]
    lines += [f"| {t} | {r['sharpness']:.4f} | {r['classifier_confidence']:.3f} |"
              for t, r in report["temperature"].items()]
    lines += ["", "each route's OpenAPI example through TorchServe, 100 times one after another:", "",
              "| route | p50 (ms) | p95 (ms) |", "| --- | --- | --- |"]
    lines += [f"| {name} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |" for name, r in report["route_latency"].items()]
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
    parser.add_argument("--edits", type=int, default=50, help="test images per source class for the edit matrices")
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
        with TorchServe(ServerConfig(torchserve=TorchServeConfig(model_store=Path(store)),
                                     models=tuple(MODELS)).with_free_ports()) as server:
            client = Api(Client(server.url, timeout=300))
            report = {"per_class": args.per_class, "edits_per_class": args.edits, "pairs": args.pairs,
                      "class_samples": class_samples(client, clf, test, args.per_class),
                      "edits": edits(client, clf, test, args.edits),
                      "class_samples_2d": class_samples(client, clf, test, args.per_class, "sample2d"),
                      "edits_2d": edits(client, clf, test, args.edits, "edit2d", "encode2d"),
                      "temperature": temperature_study(client, clf),
                      "route_latency": route_latency(client),
                      "reconstruction": reconstruction(client, test, args.samples),
                      "smoothness": smoothness(client, args.pairs),
                      "figures": figures(client, test, args.figures)}
    temperature_figure(report["temperature"], args.figures / "temperature_study.png")
    report["figures"].append("temperature_study.png")
    report["seconds"] = time.monotonic() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latent_report.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "latent_report.md").write_text(text + "\n")
    print(text)
    print(f"figures in {args.figures}: {', '.join(report['figures'])}; {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()

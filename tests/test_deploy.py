"""Dockerfile, compose stack and Kubernetes manifests, checked offline (no Docker engine or cluster here)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from deploy import lock
from runtime.artifacts import ARTIFACT_DIR
from runtime.manifest import Manifest
from serving.__main__ import parser
from serving.archive import CODE_DIRS
from serving.routes import ROUTES
from serving.settings import MODELS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                         if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


DOCKERFILE = instructions(ROOT / "Dockerfile")


def exec_form(instruction: str) -> list[str]:
    """The JSON command of ENTRYPOINT, CMD or HEALTHCHECK (after its options and CMD)."""
    args = next(args for name, args in DOCKERFILE if name == instruction)
    return json.loads(args.split(" CMD ", 1)[1] if instruction == "HEALTHCHECK" else args)


def test_dockerfile_copies_folders_that_exist():
    copies = [shlex.split(args) for name, args in DOCKERFILE if name == "COPY"]
    sources = [src for args in copies if not args[0].startswith("--from") for src in args[:-1]]
    assert sources and all((ROOT / src).exists() for src in sources), [s for s in sources if not (ROOT / s).exists()]
    code = [src for src in sources if src.endswith(".py") or (ROOT / src).is_dir()]
    assert all((ROOT / src).is_dir() for src in code), code  # whole folders, never a list of modules
    # what the archives pack and what they are built from
    copied = {(ROOT / src).resolve() for src in code}
    exports = {ROOT / "model_store" / spec.export for spec in MODELS.values()}
    assert {ROOT / folder for folder in CODE_DIRS} | exports <= copied
    assert ROOT / "model_store" / ARTIFACT_DIR in exports
    build_step = next(args for name, args in DOCKERFILE if name == "RUN" and "serving.archive" in args)
    assert "--store model_store" in build_step  # archives are built in the image, not copied in
    assert ROOT / "serving" in copied  # the launcher


def test_the_build_context_holds_what_the_dockerfile_copies():
    """.dockerignore excludes everything (venv, runs, git) but the paths the Dockerfile copies."""
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"
    sources = {src for name, args in DOCKERFILE if name == "COPY" and not args.startswith("--from")
               for src in shlex.split(args)[:-1]}
    assert {f"!{src}" for src in sources} <= set(ignore), sources


@pytest.mark.parametrize("module", ["serving", "serving.health"])
def test_the_entrypoint_and_healthcheck_modules_start(module):
    """What ENTRYPOINT and HEALTHCHECK run imports and parses its command line (--help exits 0)."""
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: python -m {module}"), result.stderr


def test_compose_file_follows_the_compose_specification(tmp_path):
    """The Compose specification's JSON schema, as vendored by check-jsonschema; a broken file must fail it."""
    check = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    result = subprocess.run([*check, str(DEPLOY / "compose.yaml")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    broken["services"]["fmvae"]["ports"] = "8080:8080"  # a string where the spec wants a list
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    assert subprocess.run([*check, str(tmp_path / "compose.yaml")], capture_output=True, timeout=120).returncode == 1


def test_entrypoint_is_make_serve_with_container_flags():
    makefile = (ROOT / "Makefile").read_text()
    serve = re.search(r"^serve:.*\n\t(.+)$", makefile, re.M).group(1)
    assert serve.split()[1:3] == ["-m", "serving"]
    assert exec_form("ENTRYPOINT") == ["python", "-m", "serving"]
    args = parser().parse_args(exec_form("CMD"))
    assert args.token_auth and args.host == "0.0.0.0"  # public inference port, with auth
    assert not args.explorer  # the page is a local tool (explorer/ is not in the image)
    health = exec_form("HEALTHCHECK")
    assert health[health.index("--work-dir") + 1] == str(args.work_dir)  # it finds TorchServe's key file
    exposed = {int(p) for name, ports in DOCKERFILE if name == "EXPOSE" for p in ports.split()}
    assert exposed == {args.inference_port, args.torchserve_metrics_port, args.metrics_port}  # not management


def test_serving_requirements_follow_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {d.split("==")[0]: d for d in deps if "==" in d}
    serve = [line.split("#")[0].strip() for line in (DEPLOY / "requirements-serve.txt").read_text().splitlines()]
    for req in filter(None, serve):
        name = re.split(r"[=<>]", req)[0]
        if name in pins:
            assert req == pins[name]
    install = next(args for name, args in DOCKERFILE if name == "RUN" and "requirements-serve.lock" in args)
    assert f"pip install {pins['torch']} onnxruntime-gpu==" in install  # the GPU image's torch is the project's pin
    cpu_lock = (DEPLOY / "requirements-cpu.lock").read_text()
    onnxruntime = re.search(r"^onnxruntime==(\S+)", cpu_lock, re.M).group(1)
    assert f"onnxruntime-gpu=={onnxruntime}" in install  # the same ONNX Runtime in both images
    assert "--require-hashes" in install


def test_one_onnxruntime_gates_the_exports_and_runs_in_the_images():
    """The venv's pin (pyproject.toml) is the images' ONNX Runtime, and each committed export was gated on it."""
    pin = lock.runtime_pin("onnxruntime").removeprefix("onnxruntime==")
    assert f"onnxruntime=={pin}" in lock.IMAGE_RUNTIMES
    assert f"onnxruntime-gpu=={pin}" in next(args for name, args in DOCKERFILE if name == "RUN" and "lock" in args)
    for export in sorted({route.export for route in ROUTES.values()}):
        assert Manifest.read(ROOT / "model_store" / export).versions["onnxruntime"] == pin, f"re-export {export}"


def test_compose_stack_references_existing_files():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"fmvae", "prometheus", "grafana"}
    assert (DEPLOY / services["fmvae"]["build"]["context"] / services["fmvae"]["build"]["dockerfile"]).is_file()
    published = [p.split(":")[-1] for p in services["fmvae"]["ports"]]
    assert published == ["8080"]  # management and metrics stay on the compose network
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source
    prometheus_config = next(v for v in services["prometheus"]["volumes"] if "prometheus.yml" in v)
    compose_prom = yaml.safe_load((DEPLOY / prometheus_config.split(":")[0]).read_text())
    local_prom = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    jobs = [[j["job_name"] for j in config["scrape_configs"]] for config in (compose_prom, local_prom)]
    assert jobs[0] == jobs[1]
    assert compose_prom["rule_files"] == local_prom["rule_files"]
    mounted_rules = {Path(v.split(":")[1]).name for v in services["prometheus"]["volumes"]}
    assert set(compose_prom["rule_files"]) <= mounted_rules


def k8s_documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]


@pytest.mark.parametrize("doc", k8s_documents("fmvae.yaml"), ids=lambda d: d["kind"])
def test_kubernetes_manifests_match_the_schemas(doc):
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_schema_check_can_fail():
    hpa = next(d for d in k8s_documents("fmvae.yaml") if d["kind"] == "HorizontalPodAutoscaler")
    hpa["spec"]["maxReplica"] = hpa["spec"].pop("maxReplicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_deployment_runs_the_image_as_built():
    deployment = next(d for d in k8s_documents("fmvae.yaml") if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["exec"]["command"] == exec_form("HEALTHCHECK")
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
    assert {p["containerPort"] for p in container["ports"]} <= {8080, 8082, 8083}


def test_kserve_inference_service_shape():
    (isvc,) = k8s_documents("kserve.yaml")  # no public schema for the CRD: check the fields KServe needs
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "pytorch" and model["storageUri"].startswith(("s3://", "gs://", "pvc://"))
    release = Manifest.read(Path("model_store") / ROUTES["sample"].export)  # the archives' --version
    assert model["storageUri"].rstrip("/").rsplit("/", 1)[1] == release.source.sha256[:12]

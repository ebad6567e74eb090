"""Dockerfile, compose stack and Kubernetes manifests, checked offline (no Docker engine or cluster here)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from deploy import image, lock
from deploy.errors import ImageError
from runtime.artifacts import ARTIFACT_DIR
from runtime.manifest import Manifest
from serving.__main__ import config_of, parser
from serving.checks import PORT_ROLES
from serving.host import host_class
from serving.ray import replica
from serving.routes import ROUTES
from serving.settings import HOSTS, MODELS, ServerConfig
from serving.torchserve.archive import CODE_DIRS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                         if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


DOCKERFILE = instructions(ROOT / "Dockerfile")


def stage(name: str) -> list[tuple[str, str]]:
    """The instructions of one stage (``FROM ... AS <name>``), up to the next FROM."""
    start = next(i for i, (op, args) in enumerate(DOCKERFILE) if op == "FROM" and args.endswith(f" AS {name}"))
    end = next((i for i in range(start + 1, len(DOCKERFILE)) if DOCKERFILE[i][0] == "FROM"), len(DOCKERFILE))
    return DOCKERFILE[start + 1:end]


def exec_form(instruction: str, host: str = "torchserve") -> list[str]:
    """The JSON command of ENTRYPOINT, CMD or HEALTHCHECK (after its options and CMD) of a host's image."""
    args = next(args for name, args in stage(f"host-{host}") if name == instruction)
    return json.loads(args.split(" CMD ", 1)[1] if instruction == "HEALTHCHECK" else args)


def copied_sources() -> list[str]:
    """What the Dockerfile's COPY instructions take from the build context, for every HOST."""
    copies = [shlex.split(args) for name, args in DOCKERFILE if name == "COPY" and not args.startswith("--from")]
    return list(dict.fromkeys(src.replace("${HOST}", host) for args in copies for src in args[:-1] for host in HOSTS))


def test_dockerfile_copies_folders_that_exist():
    sources = copied_sources()
    assert sources and all((ROOT / src).exists() for src in sources), [s for s in sources if not (ROOT / s).exists()]
    code = [src for src in sources if src.endswith(".py") or (ROOT / src).is_dir()]
    assert all((ROOT / src).is_dir() for src in code), code  # whole folders, never a list of modules
    # what the archives pack and what they are built from
    copied = {(ROOT / src).resolve() for src in code}
    exports = {ROOT / "model_store" / spec.export for spec in MODELS.values()}
    assert {ROOT / folder for folder in CODE_DIRS} | exports <= copied
    assert ROOT / "model_store" / ARTIFACT_DIR in exports
    build_step = next(args for name, args in DOCKERFILE if name == "RUN" and "serving.torchserve.archive" in args)
    assert "--store model_store" in build_step  # archives are built in the image, not copied in
    assert ROOT / "serving" in copied  # the launcher


def test_the_build_context_holds_what_the_dockerfile_copies():
    """.dockerignore excludes everything (venv, runs, git) but the paths the Dockerfile copies."""
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"
    sources = copied_sources()
    kept = [pattern.removeprefix("!") for pattern in ignore if pattern.startswith("!")]
    assert all(any(fnmatch.fnmatch(src, pattern) for pattern in kept) for src in sources), (sources, kept)


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
    broken = compose_for("torchserve")
    broken["services"]["fmvae"]["ports"] = "8080:8080"  # a string where the spec wants a list
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    assert subprocess.run([*check, str(tmp_path / "compose.yaml")], capture_output=True, timeout=120).returncode == 1


def test_the_final_stage_is_the_chosen_hosts_with_each_hosts_command():
    assert DOCKERFILE[-1 - len(stage("runtime"))] == ("FROM", "host-${HOST} AS runtime")
    assert {args for op, args in DOCKERFILE if op == "ARG" and args.startswith("HOST=")} == {"HOST=torchserve"}
    assert set(HOSTS) == {args.split(" AS host-")[1] for op, args in DOCKERFILE if " AS host-" in args}


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_entrypoint_is_make_serve_with_container_flags(host):
    makefile = (ROOT / "Makefile").read_text()
    serve = re.search(r"^serve:.*\n\t(.+)$", makefile, re.M).group(1)
    assert serve.split()[1:3] == ["-m", "serving"]
    assert exec_form("ENTRYPOINT", host) == ["python", "-m", "serving"]
    args = parser().parse_args(exec_form("CMD", host))
    assert args.server == host
    assert args.token_auth and args.host == "0.0.0.0"  # public inference port, with auth
    assert not args.explorer  # the page is a local tool (explorer/ is not in the image)
    health = exec_form("HEALTHCHECK", host)
    assert health[health.index("--work-dir") + 1] == str(args.work_dir)  # it finds the key file
    assert ("--server" in health) == (host != "torchserve") and host in health + ["torchserve"]
    exposed = {int(p) for name, ports in stage(f"host-{host}") if name == "EXPOSE" for p in ports.split()}
    public = {PORT_ROLES[field] for field in host_class(host).ports} - {"management", "explorer page", "gRPC inference",
                                                                     "gRPC management"}
    ports = config_of(args).ports()
    assert exposed == {ports[field] for field, role in PORT_ROLES.items() if role in public}


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_each_image_installs_its_hosts_locks(host):
    install = next(args for name, args in stage("build") if name == "RUN" and "--require-hashes" in args)
    assert "requirements-${HOST}-cpu.lock" in install and "requirements-${HOST}.lock" in install
    assert lock.host_lock(host).is_file() and lock.host_lock(host, cpu=True).is_file()
    assert f"pip install {lock.runtime_pin('torch')} onnxruntime-gpu==" in install  # the GPU image's torch pin
    assert install.count("--require-hashes") == 2


def test_one_onnxruntime_gates_the_exports_and_runs_in_the_images():
    """The venv's pin (pyproject.toml) is every image's ONNX Runtime, and each committed export was gated on it."""
    pin = lock.runtime_pin("onnxruntime").removeprefix("onnxruntime==")
    for host in HOSTS:
        assert f"onnxruntime=={pin} " in lock.host_lock(host, cpu=True).read_text()
    assert f"onnxruntime-gpu=={pin}" in next(args for name, args in DOCKERFILE if name == "RUN" and "lock" in args)
    for export in sorted({route.export for route in ROUTES.values()}):
        assert Manifest.read(ROOT / "model_store" / export).versions["onnxruntime"] == pin, f"re-export {export}"


def compose_for(host: str) -> dict:
    """deploy/compose.yaml as ``FMVAE_HOST=<host>`` makes it (its ``${FMVAE_HOST:-torchserve}``)."""
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text().replace("${FMVAE_HOST:-torchserve}", host))


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_compose_stack_references_existing_files(host):
    compose = compose_for(host)
    services = compose["services"]
    assert set(services) == {"fmvae", "prometheus", "grafana"}
    assert (DEPLOY / services["fmvae"]["build"]["context"] / services["fmvae"]["build"]["dockerfile"]).is_file()
    assert services["fmvae"]["build"]["args"]["HOST"] == host
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
    assert jobs[0] == (jobs[1] if host == "torchserve" else ["fmvae-handlers"])  # the KServe host has no JVM's
    targets = {t for job in compose_prom["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    exposed = {int(p) for name, ports in stage(f"host-{host}") if name == "EXPOSE" for p in ports.split()}
    assert {int(t.split(":")[1]) for t in targets} <= exposed and {t.split(":")[0] for t in targets} == {"fmvae"}
    assert compose_prom["rule_files"] == local_prom["rule_files"]
    mounted_rules = {Path(v.split(":")[1]).name for v in services["prometheus"]["volumes"]}
    assert set(compose_prom["rule_files"]) <= mounted_rules


def k8s_documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]


DEPLOYMENTS = {"torchserve": "fmvae.yaml", "kserve": "fmvae-kserve.yaml",  # Deployment + Service + HPA per host
               "ray": "fmvae-ray.yaml"}  # (and the Ray host's RayService, a CRD checked on its own)


def k8s_core_documents(name: str) -> list[dict]:
    """A manifest's documents of Kubernetes' own kinds (the ones its published schemas cover)."""
    return [d for d in k8s_documents(name) if d["kind"] != "RayService"]


@pytest.mark.parametrize("doc", [d for name in DEPLOYMENTS.values() for d in k8s_core_documents(name)],
                         ids=lambda d: f"{d['metadata']['name']}-{d['kind']}")
def test_kubernetes_manifests_match_the_schemas(doc):
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_schema_check_can_fail():
    hpa = next(d for d in k8s_documents("fmvae.yaml") if d["kind"] == "HorizontalPodAutoscaler")
    hpa["spec"]["maxReplica"] = hpa["spec"].pop("maxReplicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, kubernetes_validate.latest_version(), strict=True)


def runs_the_image_as_built(pod: dict, host: str) -> None:
    """A pod spec's one container runs the host's image with its health check as every probe, as its user, with
    only ports the image exposes."""
    (container,) = pod["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == exec_form("HEALTHCHECK", host), probe
    assert pod["securityContext"]["runAsUser"] == 10001
    exposed = {int(p) for name, ports in stage(f"host-{host}") if name == "EXPOSE" for p in ports.split()}
    assert {p["containerPort"] for p in container["ports"]} <= exposed
    assert container["image"].split("/")[-1].split(":")[0] == ("fmvae" if host == "torchserve" else f"fmvae-{host}")


@pytest.mark.parametrize("host", sorted(DEPLOYMENTS))
def test_kubernetes_deployment_runs_the_image_as_built(host):
    deployments = [d for d in k8s_documents(DEPLOYMENTS[host]) if d["kind"] == "Deployment"]
    (deployment,) = deployments
    runs_the_image_as_built(deployment["spec"]["template"]["spec"], host)
    names = {d["kind"]: d["metadata"]["name"] for d in k8s_core_documents(DEPLOYMENTS[host])}
    assert set(names) == {"Deployment", "Service", "HorizontalPodAutoscaler"} and len(set(names.values())) == 1


def test_the_ray_service_deploys_every_route_and_the_fronts_join_it():
    """The RayService's serveConfigV2 runs every route as ``serving.ray.replica:app`` builds it (no HTTP route:
    the fronts call the handles), on a GPU share exactly for the routes that go on a GPU; its pods run the Ray
    host's image with the token from one Secret; the fronts join its head Service; its pod specs are Pods'."""
    service, *_ = k8s_documents(DEPLOYMENTS["ray"])
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert serve_config["proxy_location"] == "Disabled"
    apps = {app["name"]: app for app in serve_config["applications"]}
    assert list(apps) == list(MODELS)
    for name, app in apps.items():
        assert app["import_path"] == "serving.ray.replica:app" and app["route_prefix"] is None
        (deployment,) = app["deployments"]
        assert deployment["name"] == name and app["args"]["route"] == name
        assert ("num_gpus" in deployment["ray_actor_options"]) == MODELS[name].gpu, name
        scaling = deployment["autoscaling_config"]
        assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
        built = replica.app(app["args"] | {"export_store": str(ROOT / "model_store")})
        assert built._bound_deployment.name == name
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == lock_version("ray")
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert {g.get("groupName") for g in groups[1:]} == {"cpu", "gpu"}
    for group in groups:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ray"}, "spec": group["template"]["spec"]}
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"].split("/")[-1].split(":")[0] == "fmvae-ray"
        token = next(e for e in container["env"] if e["name"] == "RAY_AUTH_TOKEN")
        assert token["valueFrom"]["secretKeyRef"]["name"] == "fmvae-ray-token"
    (front,) = [d for d in k8s_documents(DEPLOYMENTS["ray"]) if d["kind"] == "Deployment"]
    (container,) = front["spec"]["template"]["spec"]["containers"]
    config = config_of(parser().parse_args(container["args"]))
    assert config.server == "ray" and config.ray.ray_address == f"{service['metadata']['name']}-head-svc:6379"
    assert config.token_auth and config.export_store == Path("model_store")


def lock_version(package: str) -> str:
    """The version requirements.lock pins ``package`` at."""
    return re.search(rf"^{package}==(\S+)", (ROOT / "requirements.lock").read_text(), re.M).group(1)


def test_kserve_inference_service_runs_the_kserve_hosts_image():
    """No public schema for the CRD: its predictor's pod spec is validated as a Pod's, and the fields KServe
    needs are checked; the image's tag is the released model's identity."""
    (isvc,) = k8s_documents("kserve.yaml")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = dict(isvc["spec"]["predictor"])
    scaling = {key: predictor.pop(key) for key in ("minReplicas", "maxReplicas")}
    assert 1 <= scaling["minReplicas"] <= scaling["maxReplicas"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fmvae"}, "spec": predictor}
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    runs_the_image_as_built(predictor, "kserve")
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container" and [p["containerPort"] for p in container["ports"]] == [8080]
    release = Manifest.read(ROOT / "model_store" / ROUTES["sample"].export)
    identity = release.source.sha256[:12]
    assert container["image"].rsplit(":", 1)[1] == identity == isvc["metadata"]["labels"]["fmvae/model"]
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert int(annotations["prometheus.kserve.io/port"]) == ServerConfig.metrics_port


def test_base_reaps_tar_when_podman_import_fails(monkeypatch):
    """``podman import`` failing without reading its input leaves no tar blocked on a full pipe, nor the pipe open."""
    started, popen = [], subprocess.Popen

    def spawn(*args: object, **kwargs: object) -> subprocess.Popen:
        started.append(popen(*args, **kwargs))
        return started[-1]

    def run(*cmd: str, **kwargs: object) -> None:
        if cmd[0] != "debootstrap":
            raise ImageError(f"{' '.join(cmd[:2])} failed")
        Path(cmd[-2], "big").write_bytes(bytes(1 << 20))  # more than a pipe holds: tar blocks until it is read

    monkeypatch.setattr(image, "image_exists", lambda name: False)
    monkeypatch.setattr(image, "run", run)
    monkeypatch.setattr(image.subprocess, "Popen", spawn)
    try:
        with pytest.raises(ImageError, match="podman import"):
            image.base()
        (tar,) = started
        assert tar.args[0] == "tar" and tar.returncode is not None and tar.stdout.closed
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("failing", ["mount", "run", None])
def test_a_container_that_fails_to_start_is_unmounted_and_removed(failing, monkeypatch, tmp_path):
    """A failure after ``buildah from`` in Container() unmounts and removes the working container and closes its
    log; a container that started is left to remove()."""
    calls, logs = [], []

    def buildah(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:  # run's, subprocess.run's, Popen's
        calls.append(cmd[1])
        if cmd[1] == failing:
            raise ImageError(f"buildah {failing} failed")
        return subprocess.CompletedProcess(cmd, 0, {"from": "working-container\n", "mount": f"{tmp_path}\n"}
                                           .get(cmd[1], ""), "")

    def opened(*args: object, **kwargs: object) -> object:
        logs.append(open(*args, **kwargs))  # checked below, then closed
        return logs[-1]

    monkeypatch.setattr(image, "config", lambda name: {"Entrypoint": ["make"], "Cmd": ["serve"]})
    monkeypatch.setattr(image, "run", lambda *cmd, **kwargs: buildah(list(cmd), **kwargs))
    monkeypatch.setattr(image.subprocess, "run", buildah)
    monkeypatch.setattr(image.subprocess, "Popen", buildah)
    monkeypatch.setattr(image, "open", opened, raising=False)
    try:
        if failing is None:
            image.Container("fmvae:cpu", tmp_path / "container.log")
            assert calls == ["from", "mount", "run"] and not logs[0].closed
        else:
            with pytest.raises(ImageError, match=failing):
                image.Container("fmvae:cpu", tmp_path / "container.log")
            assert calls[-2:] == ["umount", "rm"] and all(log.closed for log in logs)
            assert calls[:-2] == ["from", "mount", "run"][:["from", "mount", "run"].index(failing) + 1]
    finally:
        for log in logs:
            log.close()

# The user interface of the project. `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_PKG_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

RUN ?= runs/train
CHECKPOINT ?= $(RUN)/final.pt
RELEASE_RUN ?= runs/release-prior
RELEASE_ENCODER ?= runs/release
RELEASE_LONG ?= runs/release-long
RELEASE_BASE ?= runs/release-60
SWEEP ?=
EXPERIMENT_ARGS ?=
TRAIN_ARGS ?=
EVAL_ARGS ?=
EXPORT_NAME ?= export
EXPORT_ARGS ?=
BENCH_ARGS ?=
ARCHIVES ?= build/model_store
SERVE_ARGS ?=
HOST ?= torchserve
SERVE_BENCH_ARGS ?=
EXPLORER_BENCH_ARGS ?=
LOADTEST_ARGS ?=
SOAK_ARGS ?=
CAPACITY_ARGS ?=
EXPORT ?=
ROLLOUT_ARGS ?=
WORK_DIR ?= runs/serve/work
GPU_BENCH_ARGS ?=
IMAGE_KIND ?= gpu
# buildah, podman and debootstrap from Debian for the image targets (no Docker engine needed)
IMAGE_TOOLS = command -v buildah >/dev/null && command -v podman >/dev/null && command -v debootstrap >/dev/null \
	|| { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends buildah podman debootstrap; }

.PHONY: help setup rollout rollback lock train evaluate classifier release experiments export archives bench serve serve-bench explorer-bench loadtest capacity soak gpu-bench gpu-bundle image image-cpu image-test test test-fast lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup: $(VENV)/.installed node_modules/.installed  ## venv from requirements.lock (hash-checked), Debian packages (dataset, Java 17, prometheus, chromium), npm ci

$(VENV)/.installed: pyproject.toml client/pyproject.toml requirements.lock
	@pkgs=""; \
	[ -f $(DATA_PKG_DIR)/train-images-idx3-ubyte.gz ] || pkgs="$$pkgs dataset-fashion-mnist"; \
	command -v java >/dev/null || pkgs="$$pkgs openjdk-17-jre-headless"; \
	command -v promtool >/dev/null || pkgs="$$pkgs prometheus"; \
	command -v chromium >/dev/null || pkgs="$$pkgs chromium"; \
	if [ -n "$$pkgs" ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages: $$pkgs"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$pkgs; \
	fi
	python3.11 -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . -e ./client
	touch $@

# ONNX Runtime Web for the explorer page's in-page decoder (explorer/server.py serves two of its files): exactly the
# lock file's versions and hashes, no install scripts.
node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null || { echo "error: npm not found: the explorer's in-page decoder is installed with npm (7 or later; Node.js 20 ships npm 10; Debian: apt-get install npm), then run make setup again" >&2; exit 1; }
	npm ci --ignore-scripts --no-audit --no-fund
	touch $@

lock: $(VENV)/.installed  ## recompile requirements.lock (pip-compile, hashes); the images' locks follow it (deploy/lock.py)
	$(PY) -m deploy.lock

train: setup  ## train the VAE (60 epochs by default) into runs/train (RUN=dir); TRAIN_ARGS="--subset 5000 --epochs 2"
	$(PY) -m training.train --out $(RUN) $(TRAIN_ARGS)

classifier: setup  ## train the feature classifier used by evaluate/export (model_store/classifier.pt)
	$(PY) -m training.classifier

evaluate: setup  ## evaluate CHECKPOINT (default runs/train/final.pt): report.md, report.json, figures beside it
	$(PY) -m training.evaluate $(CHECKPOINT) $(EVAL_ARGS)

release: setup  ## train the release's four runs if needed (RELEASE_BASE, RELEASE_LONG, RELEASE_ENCODER, RELEASE_RUN: docs/model.md), then publish RELEASE_RUN to model_store/release with report and model card
	[ -f $(RELEASE_RUN)/final.pt ] || [ -f $(RELEASE_ENCODER)/final.pt ] || [ -f $(RELEASE_LONG)/final.pt ] || \
		[ -f $(RELEASE_BASE)/final.pt ] || $(PY) -m training.train --out $(RELEASE_BASE) --lr-decay-start 30
	[ -f $(RELEASE_RUN)/final.pt ] || [ -f $(RELEASE_ENCODER)/final.pt ] || [ -f $(RELEASE_LONG)/final.pt ] || \
		$(PY) -m training.train --out $(RELEASE_LONG) --init-from $(RELEASE_BASE)/final.pt --epochs 85 --lr 3e-4 --lr-decay-start 60
	[ -f $(RELEASE_RUN)/final.pt ] || [ -f $(RELEASE_ENCODER)/final.pt ] || $(PY) -m training.train --out $(RELEASE_ENCODER) \
		--init-decoder-from $(RELEASE_LONG)/final.pt --encoder-channels 64 128 256 --freeze-decoder-epochs 15 --epochs 40 \
		--lr 5e-4 --lr-decay-start 15 --checkpoint-every 5
	[ -f $(RELEASE_RUN)/final.pt ] || $(PY) -m training.train --out $(RELEASE_RUN) --init-from $(RELEASE_ENCODER)/final.pt \
		--prior-components 512 --epochs 60 --lr 3e-4 --lr-decay-start 45 --checkpoint-every 5
	$(PY) -m training.release $(RELEASE_RUN)/final.pt --k 100

export: setup  ## released models -> quantized decoders, parity gate, model_store/export{,-2d}/ (CHECKPOINT=, EXPORT_NAME=)
	$(PY) -m export $(if $(filter command line,$(origin CHECKPOINT)),$(CHECKPOINT) --name $(EXPORT_NAME)) $(EXPORT_ARGS)

archives: setup  ## TorchServe archives from model_store/export*/ and the worker code, into build/model_store/
	$(PY) -m serving.torchserve.archive --out $(ARCHIVES)

experiments: setup  ## the beta, latent-size, KL warm-up and lever sweeps into docs/experiments/ (SWEEP=beta, EXPERIMENT_ARGS)
	$(PY) -m experiments $(SWEEP) $(EXPERIMENT_ARGS)

bench: setup  ## decoder speed per artifact vs fp32 eager (runs/bench/decoders.json)
	$(PY) -m bench.decoders --out runs/bench/decoders.json $(BENCH_ARGS)

serve: setup $(if $(filter torchserve,$(HOST)),archives)  ## TorchServe on 127.0.0.1:8080 with every route (HOST=kserve: KServe's ModelServer; HOST=ray: it over Ray Serve), the explorer on :8084; metrics on :8083
	$(PY) -m serving --server $(HOST) --model-store $(ARCHIVES) $(SERVE_ARGS)

rollout: setup  ## send a new export to the running service without a lost request: EXPORT=<folder> (ROLLOUT_ARGS="--canary 10")
	@[ -n "$(EXPORT)" ] || { echo "error: give the export folder: make rollout EXPORT=model_store/<name>" >&2; exit 2; }
	$(PY) -m serving rollout $(EXPORT) --work-dir $(WORK_DIR) $(ROLLOUT_ARGS)

rollback: setup  ## serve the build before the last roll-out again, the same way
	$(PY) -m serving rollback --work-dir $(WORK_DIR) $(ROLLOUT_ARGS)

serve-bench: setup  ## the hosts side by side with their echo floors and the 40-line peers, v2 and Ray rows (runs/serve-bench)
	$(PY) -m bench.serving --out runs/serve-bench $(SERVE_BENCH_ARGS)

explorer-bench: archives  ## the explorer's in-page decode and server round trip per move, fps, in chromium (runs/bench/explorer.json)
	$(PY) -m bench.explorer $(EXPLORER_BENCH_ARGS)

loadtest: archives  ## Locust, 50 users for 60 s, p50 gates (80 ms); starts a server if none answers (LOADTEST_ARGS)
	$(PY) -m loadtest $(LOADTEST_ARGS)

capacity: archives  ## the users each host holds under the all-route mix (p50 <= 80 ms, no failures): docs/capacity/ (CAPACITY_ARGS)
	$(PY) -m loadtest.capacity $(CAPACITY_ARGS)

soak: setup $(if $(filter torchserve,$(HOST)),archives)  ## 10 minutes of mixed load on a fresh server (HOST=kserve too): errors, p50 drift, memory, log bound (SOAK_ARGS)
	$(PY) -m loadtest.soak --server $(HOST) $(SOAK_ARGS)

gpu-bench: setup  ## the one-shot GPU benchmark into runs/gpu (docs/gpu.md; on a CPU too: GPU_BENCH_ARGS=--smoke)
	$(PY) -m bench.gpu --out runs/gpu $(GPU_BENCH_ARGS)

gpu-bundle: setup  ## wheels and a Java runtime the GPU machine lacks, into build/gpu-bundle; sizes, commands, CPU dry run
	@command -v jlink >/dev/null || ls /usr/lib/jvm/*17*/bin/jlink >/dev/null 2>&1 \
		|| { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends openjdk-17-jdk-headless; }
	$(PY) -m deploy.gpu_bundle build
	$(PY) -m deploy.gpu_bundle check

image: setup  ## the GPU serving image with buildah: localhost/fmvae:gpu (HOST=kserve|ray: localhost/fmvae-<host>:gpu; Docker: see README)
	@$(IMAGE_TOOLS)
	$(PY) -m deploy.image build --host $(HOST) --kind gpu

image-cpu: setup  ## the CPU-only serving image: localhost/fmvae:cpu (HOST=kserve|ray: localhost/fmvae-<host>:cpu, no torch)
	@$(IMAGE_TOOLS)
	$(PY) -m deploy.image build --host $(HOST) --kind cpu

image-test: setup  ## base image if missing, build, run and check the image as a client would (HOST=kserve|ray, IMAGE_KIND=cpu)
	@$(IMAGE_TOOLS)
	$(PY) -m deploy.image test --host $(HOST) --kind $(IMAGE_KIND)

test: setup  ## the whole test suite, real TorchServe, Prometheus and browser included
	$(PY) -m pytest -q

test-fast: setup  ## the tests that need no TorchServe, Java, Prometheus or browser (about 2 minutes)
	$(PY) -m pytest -q -m "not integration"

lint: setup  ## ruff, and hadolint on the Dockerfile (fails on any finding)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint --failure-threshold info Dockerfile

clean:  ## remove the venv, node_modules, runs/ and build/
	rm -rf $(VENV) node_modules runs build .pytest_cache .ruff_cache

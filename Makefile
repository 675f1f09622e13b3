# kubetune developer entry points. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv system-deps demo test test-unit lint check generate clean images images-runtime

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[runtime,operator,dev,tracking,cloud]'
	touch $@

# Host tools beyond Python and Go (iproute2, util-linux, lua5.1), installed with apt-get where missing (root).
system-deps:
	scripts/system-deps.sh

# The container images as OCI archives, built with mmdebstrap + buildah (no Docker engine): images/build.sh.
# Cached in ~/.cache/kubetune/images/<name>-<hash>/ (a no-op while the inputs are unchanged).
images: venv
	scripts/system-deps.sh install images
	images/build.sh operator

# The training runtime (torch's CUDA build, one image for CPU and GPU nodes): the local cluster's pods run it,
# so `make test` and `make demo` build it (cold build time and size in images/README.md; docs/testing.md).
images-runtime: venv
	scripts/system-deps.sh install images
	images/build.sh runtime

# A local control plane, the operator, and a tiny CPU fine-tune through it (examples/finetune-cpu-smoke.yaml).
demo: venv system-deps cluster-build node-build images images-runtime
	bash e2e/demo.sh

# Every tier that needs no GPU: unit, integration (real control plane and node) and e2e (pods train from the
# runtime image). Installs what it needs first: the virtualenv, the host tools, the control plane's and the
# node's binaries, the images the node runs and the S3 store (each cached by the hash of its inputs).
test: venv system-deps cluster-build node-build images images-runtime s3store-build
	$(PY) -m pytest

test-unit: venv
	$(PY) -m pytest tests/unit

# Style and types: ruff, then mypy over the packages [tool.mypy] in pyproject.toml names (the dev extra
# installs it with `make venv`).
lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# What to run before a commit: lint, the generated files up to date, the unit tests (no cluster, no GPU).
check: lint
	$(PY) scripts/generate.py --check
	$(PY) -m pytest tests/unit -q

generate: venv
	$(PY) scripts/generate.py

# ---- local Kubernetes for tests (e2e/localcluster.sh; docs/testing.md) ----------------------------
# cluster-build: etcd + kube-apiserver/controller-manager/scheduler/kubectl + helm from Go modules
# into ~/.cache/kubetune/cluster/<hash>/bin (cold: ~15 min on 2 cores; a no-op while cached).
.PHONY: cluster cluster-build node-build cluster-down test-integration s3store-build
# s3store-build: the tests' S3-compatible object store, SeaweedFS's `weed`, from its Go module into
# ~/.cache/kubetune/seaweedfs/<hash>/bin (tests/s3_server.py starts it; cold build time: docs/testing.md).
s3store-build:
	e2e/s3store/build.sh build

cluster-build:
	e2e/cluster/build.sh build

# node-build: the real node (kubelet, kube-proxy, CoreDNS, containerd, the pause image) from Go modules into
# ~/.cache/kubetune/node/<hash>/bin, and the Debian tools it runs (runc, CNI plugins, iptables).
node-build:
	scripts/system-deps.sh install node
	e2e/node/build.sh build

cluster: venv cluster-build node-build images images-runtime
	e2e/localcluster.sh up

cluster-down:
	e2e/localcluster.sh down

test-integration: venv cluster-build node-build images images-runtime
	$(PY) -m pytest -m integration tests/integration

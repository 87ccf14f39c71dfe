# Triton from the nvidia-pytriton wheel, no Docker: the package qwen_triton.runtime (docs/triton-runtime.md)
# through its command-line entry points tools/triton_install.py and tools/triton_server.py.
# Include from the top-level Makefile:   include tools/triton.mk
# To make triton-install build the venv first, set before the include:   TRITON_INSTALL_DEPS := install
# A serve target can then be:   serve: triton-install ; $(TRITON_SERVER) start --foreground ...
# (or `make triton-serve`).

TRITON_DIR ?= .triton
TRITON_MODEL_REPO ?= model_repo
TRITON_HTTP_PORT ?= 8000
TRITON_GRPC_PORT ?= 8001
TRITON_METRICS_PORT ?= 8002
# The Python environment the Python-backend models run in (the stub must match its minor version and it
# must have numpy<2). Defaults to the top-level Makefile's $(PY), else .venv/bin/python.
TRITON_PY ?= $(if $(PY),$(PY),.venv/bin/python)
# Stub version for the tarball carried to the GPU machine (Python 3.12 there).
TRITON_TARBALL_PYTHON ?= 3.12
TRITON_TARBALL ?= artifacts/triton-py$(subst .,,$(TRITON_TARBALL_PYTHON)).tar.gz
TRITON_START_ARGS ?=
# The OpenAI-compatible API beside Triton, supervised with it (python -m qwen_triton.openai_api, on
# 127.0.0.1 unless TRITON_HOST says otherwise; API key from $QWEN_TRITON_API_KEY): OPENAI=0 leaves it out.
OPENAI ?= 1
OPENAI_PORT ?= 9000
TRITON_OPENAI_ARGS = $(if $(filter 1 true yes,$(OPENAI)),--openai-port $(OPENAI_PORT))
TRITON_INSTALL_DEPS ?=

TRITON_SERVER = $(TRITON_PY) tools/triton_server.py
TRITON_PORT_ARGS = --http-port $(TRITON_HTTP_PORT) --grpc-port $(TRITON_GRPC_PORT) \
	--metrics-port $(TRITON_METRICS_PORT)

.PHONY: triton-install triton-tarball triton-start triton-serve triton-stop triton-status \
	triton-test triton-clean

# Idempotent: a no-op (well under a second) when $(TRITON_DIR)/.installed.json matches.
triton-install: $(TRITON_INSTALL_DEPS)
	$(TRITON_PY) tools/triton_install.py --dest $(TRITON_DIR) --python $(TRITON_PY)

# A trimmed install for another machine: untar with `tar xzf $(TRITON_TARBALL) -C <repo>` (gives .triton/).
triton-tarball:
	$(TRITON_PY) tools/triton_install.py --dest artifacts/triton-py$(TRITON_TARBALL_PYTHON)/.triton \
		--python $(TRITON_TARBALL_PYTHON) --tarball $(TRITON_TARBALL)

# In the background (logs/tritonserver.log, logs/tritonserver.pid, logs/openai_api.log); returns once
# /v2/health/ready (and the OpenAI API's /health) answer 200.
triton-start: triton-install
	$(TRITON_SERVER) start --triton-dir $(TRITON_DIR) --python $(TRITON_PY) \
		--model-repository $(TRITON_MODEL_REPO) $(TRITON_PORT_ARGS) $(TRITON_OPENAI_ARGS) $(TRITON_START_ARGS)

# In the foreground; Ctrl-C stops it.
triton-serve: triton-install
	$(TRITON_SERVER) start --foreground --triton-dir $(TRITON_DIR) --python $(TRITON_PY) \
		--model-repository $(TRITON_MODEL_REPO) $(TRITON_PORT_ARGS) $(TRITON_OPENAI_ARGS) $(TRITON_START_ARGS)

triton-stop:
	$(TRITON_SERVER) stop

triton-status:
	$(TRITON_SERVER) status

# The runtime tests against the toy repository (tests/fixtures/toy_repo) on free ports.
triton-test: triton-install
	TRITON_DIR=$(TRITON_DIR) $(TRITON_PY) -m pytest -q tests/test_triton_runtime.py

triton-clean:
	rm -rf $(TRITON_DIR) artifacts/triton-py*

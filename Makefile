# qwen-triton
#   make install        virtual environment with everything (CPU torch where no GPU)
#   make build-engine   the real default model, or MODEL=/path/to/ckpt (MODEL=random: random weights);
#                       DECOUPLED=false: unary /infer and ModelInfer instead of streaming;
#                       QUANT=int8_wo|int4_wo|gptq|awq|w8a8|fp8 (docs/quantization.md), KV_CACHE=int8|fp8;
#                       TP=N: tensor parallel, one engine split over N GPUs (N processes on a CPU), both engines
#   make serve          installs Triton from the pytriton wheel, builds when needed, starts, waits for ready;
#                       with the OpenAI-compatible API on OPENAI_PORT (9000; OPENAI=0: without it)
#   make serve-openai   the OpenAI-compatible API alone, in the foreground, for a Triton already running
#   make webdemo        the gradio web demo on WEBDEMO_PORT (7860; 127.0.0.1), a client of the API on OPENAI_PORT
#   make stop           stops the server
#   make test           the whole test suite (starts its own servers on free ports), after make lint
#   make lint           ruff, and the size limits (python -m tools.check_sizes: 400 lines a file, 60 a function)
#   make loadtest       a Locust sweep against the running server (report under logs/loadtest/)
#   make genai-perf     NVIDIA GenAI-Perf against the running server (logs/genai-perf/)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
MODEL ?=
ENGINE ?= qwen_triton
BUILD_ARGS ?=
DECOUPLED ?=
MODEL_REPO ?= model_repo

TRITON_MODEL_REPO = $(MODEL_REPO)
TRITON_INSTALL_DEPS := install
include tools/triton.mk
include loadtest/loadtest.mk

.PHONY: install build-engine serve serve-openai webdemo stop status test test-fast lint clean genai-perf

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml tools/install_torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	tools/install_torch.sh $(PY)
	$(PY) -m pip install -q -e '.[build,client,loadtest,test,demo,deploy]'
	touch $@

build-engine: install
	$(PY) -m build $(if $(MODEL),--model $(MODEL)) --engine $(ENGINE) --model-repo $(MODEL_REPO) \
		$(if $(DECOUPLED),--set decoupled=$(DECOUPLED)) $(if $(QUANT),--set quantization=$(QUANT)) \
		$(if $(KV_CACHE),--set kv_cache_dtype=$(KV_CACHE)) $(if $(TP),--set tensor_parallel_size=$(TP)) $(BUILD_ARGS)

$(MODEL_REPO)/ensemble/config.pbtxt:
	$(MAKE) build-engine

serve: install triton-install $(MODEL_REPO)/ensemble/config.pbtxt triton-start

# the OpenAI-compatible API (qwen_triton/openai_api) in the foreground, for the Triton on TRITON_GRPC_PORT
serve-openai: install
	$(PY) -m qwen_triton.openai_api --triton-grpc 127.0.0.1:$(TRITON_GRPC_PORT) --port $(OPENAI_PORT) \
		--model-repository $(MODEL_REPO) $(OPENAI_ARGS)

# the gradio web demo (clients/webdemo.py) in the foreground, talking to the OpenAI-compatible API of
# make serve (OPENAI_PORT); WEBDEMO_HOST=0.0.0.0 serves other machines (the demo has no login of its own)
WEBDEMO_PORT ?= 7860
WEBDEMO_HOST ?= 127.0.0.1
WEBDEMO_ARGS ?=
webdemo: install
	$(PY) -m clients.webdemo --host $(WEBDEMO_HOST) --port $(WEBDEMO_PORT) \
		--base-url http://127.0.0.1:$(OPENAI_PORT)/v1 $(WEBDEMO_ARGS)

stop: triton-stop

status: triton-status

test: install triton-install lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not server and not slow" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check qwen_triton build tools clients tests model_repo loadtest
	$(PY) -m tools.check_sizes

# NVIDIA GenAI-Perf against the running server, from its own venv (GENAI_PERF_ARGS: genai-perf profile flags)
genai-perf:
	tools/genai_perf.sh $(GENAI_PERF_ARGS)

clean:
	rm -rf $(VENV) .venv-genai-perf .pytest_cache .hypothesis

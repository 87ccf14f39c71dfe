# Load tests (loadtest/, its report loadtest/report/, docs/loadtest.md).  Include from the top-level Makefile:
#     include loadtest/loadtest.mk
#
#   make loadtest                 a concurrency sweep against the running server (`make serve`), then the HTML
#                                 report: logs/loadtest/<time>/report.html (+ run.json, summary.csv, requests.csv)
#   make loadtest LOADTEST_CONCURRENCY=1,8 LOADTEST_DURATION=20 LOADTEST_WORKLOAD=sharegpt LOADTEST_ARGS="--scale 0.25"
#   make loadtest-report RUN=logs/loadtest/<time>      render a run's report again
#   make loadtest-wheels          the client's wheels for the GPU machine (Python 3.12) into $(LOADTEST_WHEELS)
#
# The server is 127.0.0.1 on TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT (8000 / 8001 / 8002).

PY ?= .venv/bin/python
TRITON_HTTP_PORT ?= 8000
TRITON_GRPC_PORT ?= 8001
TRITON_METRICS_PORT ?= 8002
# Prerequisites of `make loadtest` (the top-level Makefile's `install`); empty them to skip.
LOADTEST_DEPS ?= install
LOADTEST_CONCURRENCY ?= 1,4,16,64,256
LOADTEST_DURATION ?= 30
LOADTEST_WORKLOAD ?= fixed
LOADTEST_INPUT_LEN ?= 128
LOADTEST_OUTPUT_LEN ?= 128
LOADTEST_PROTOCOL ?= http_stream
LOADTEST_OUT ?= logs/loadtest/$(shell date +%Y%m%d-%H%M%S)
LOADTEST_ARGS ?=
LOADTEST_WHEELS ?= artifacts/wheels-loadtest
LOADTEST_WHEEL_PYTHON ?= 3.12

LOADTEST_LEN_ARGS = $(if $(filter fixed,$(LOADTEST_WORKLOAD)),--input-len $(LOADTEST_INPUT_LEN) --output-len $(LOADTEST_OUTPUT_LEN))

# What the GPU machine's image lacks for the load-test client and the supervisor's front (it has numpy, grpcio and torch; its protobuf 7
# is too new for tritonclient's generated code, hence protobuf 6).  Versions as tested on the CPU machine.
LOADTEST_WHEEL_PKGS = locust==2.47.0 gevent==26.9.0 greenlet==3.3.2 zope.event==6.2 zope.interface==8.7 \
	geventhttpclient==2.6.1 brotli==1.2.1 certifi tritonclient==2.73.0 python-rapidjson==1.25 ml-dtypes==0.5.4 \
	urllib3==2.8.0 protobuf==6.33.6 flask==3.1.3 werkzeug==3.1.9 itsdangerous==2.2.0 blinker==1.9.0 click==8.5.1 \
	flask-cors==6.0.5 flask-login==0.6.3 configargparse==1.9.0 msgpack==1.2.4 psutil==7.2.2 pyzmq==27.3.0 \
	requests==2.34.2 charset-normalizer==3.5.2 idna==3.20 python-engineio==4.15.1 python-socketio==5.18.1 \
	simple-websocket==1.1.0 wsproto==1.3.2 h11==0.16.0 bidict==0.24.1 websocket-client==1.9.2 pytest==9.2.0 \
	iniconfig==2.3.1 pluggy==1.7.0 pygments==2.21.0 jinja2==3.1.6 markupsafe==3.0.4 packaging==26.3 \
	starlette==1.10.0 uvicorn==0.54.0 httpx==0.28.1 httpcore==1.0.9 anyio==4.16.0 typing_extensions==4.16.0

.PHONY: loadtest loadtest-report loadtest-wheels

loadtest: $(LOADTEST_DEPS)
	TRITON_HTTP_PORT=$(TRITON_HTTP_PORT) TRITON_GRPC_PORT=$(TRITON_GRPC_PORT) \
	TRITON_METRICS_PORT=$(TRITON_METRICS_PORT) $(PY) -m loadtest.run \
		--concurrency $(LOADTEST_CONCURRENCY) --duration $(LOADTEST_DURATION) \
		--workload $(LOADTEST_WORKLOAD) $(LOADTEST_LEN_ARGS) --protocol $(LOADTEST_PROTOCOL) \
		--out $(LOADTEST_OUT) $(LOADTEST_ARGS)

loadtest-report:
	@test -n "$(RUN)" || { echo "usage: make loadtest-report RUN=logs/loadtest/<time>"; exit 2; }
	$(PY) -m loadtest.report $(RUN)

# Binary wheels only, for CPython $(LOADTEST_WHEEL_PYTHON) on x86_64 Linux, without dependencies (the list is
# complete for the GPU image); carry the folder and let tools/loadtest_gpu.sh install them.
loadtest-wheels:
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --dest $(LOADTEST_WHEELS) \
		--python-version $(LOADTEST_WHEEL_PYTHON) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
		--platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		--platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 --platform manylinux_2_5_x86_64 \
		--platform manylinux1_x86_64 --platform any $(LOADTEST_WHEEL_PKGS)
	@du -sh $(LOADTEST_WHEELS)

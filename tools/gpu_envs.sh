#!/usr/bin/env bash
# On the GPU machine (image python3 holds torch, numpy 2): the environments the served path needs, from the
# files carried in .carry/ (see tools/gpu_serve_check.py): .triton/ unpacked, /tmp/stubenv (numpy 1.26 for
# Triton's Python backend stub, the image's packages after it) and /tmp/ltenv (the load-test client:
# locust, gevent, tritonclient, protobuf 6 from .carry/wheels, the image's packages after them).
# A venv made from the image's python (itself a venv) does not see the image's packages through
# --system-site-packages, hence the .pth files.
set -euo pipefail
cd "$(dirname "$0")/.."
# the wheels may come packed (tools/wheel_pack.py: xz of their contents, to fit the carry limit)
if [[ -f .carry/wheels.tar.xz ]]; then python3 -m tools.wheel_pack unpack .carry/wheels.tar.xz .carry; fi
python3 - <<'PY'
import sys
sys.path.insert(0, "tools")
import tarfile
from pathlib import Path
import gpu_serve_check as g
print("stub python:", g.stub_env(Path(".carry")))
with tarfile.open(next(Path(".carry").glob("triton-py312.tar.xz"))) as tar:
    tar.extractall(".", filter="tar")
PY
python3 -m venv --without-pip /tmp/ltenv
site=$(ls -d /tmp/ltenv/lib/python3*/site-packages)
python3 -m pip install -q --no-index --no-deps --target "$site" .carry/wheels/*.whl
python3 -c "import pathlib, torch; print(pathlib.Path(torch.__file__).resolve().parents[1])" > "$site/zz_image.pth"
pwd >> "$site/zz_image.pth"
/tmp/ltenv/bin/python -c "import locust, gevent, geventhttpclient, tritonclient.grpc; print('load-test client ok')"

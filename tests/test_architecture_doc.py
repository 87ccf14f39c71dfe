"""docs/architecture.md matches the code: every module it names exists (the page is read first, so a
stale name sends a newcomer looking for a file that is gone)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("qwen_triton", "build", "clients", "loadtest", "tools", "model_repo", "tests")


def named_modules(text: str) -> set[str]:
    """The `*.py` names the page puts in backticks, patterns (`soak*.py`, `<name>.py`) aside."""
    names = {m.group(1) for m in re.finditer(r"`([\w./*<>-]+\.py)`", text)}
    return {n for n in names if not any(ch in n for ch in "*<>")}


def test_every_module_the_architecture_page_names_exists():
    files = [p.relative_to(ROOT).as_posix() for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")]
    names = named_modules((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    assert len(names) > 40  # the page names the modules; a parser that finds none checks nothing
    missing = sorted(n for n in names if not any(f == n or f.endswith("/" + n) for f in files))
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"

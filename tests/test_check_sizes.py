"""tools/check_sizes.py, the size limits `make lint` enforces, on files written here."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools.check_sizes import FOLDERS, MAX_FILE_LINES, MAX_FUNCTION_LINES, check_tree, main

ROOT = Path(__file__).resolve().parent.parent


def _function(name: str, body_lines: int, indent: str = "") -> str:
    """A function of 1 + body_lines lines."""
    return f"{indent}def {name}():\n" + "".join(f"{indent}    x = {i}\n" for i in range(body_lines))


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_files_and_functions_over_the_limits_are_reported(tmp_path):
    _write(tmp_path, "build/ok.py", _function("fits", MAX_FUNCTION_LINES - 1))  # exactly the limit
    _write(tmp_path, "build/long_fn.py", "import os\n\n\n" + _function("too_long", MAX_FUNCTION_LINES))
    _write(tmp_path, "qwen_triton/deep/methods.py",
           "class A:\n" + _function("method", MAX_FUNCTION_LINES + 5, indent="    ")
           + "    async def fine(self):\n        pass\n")
    _write(tmp_path, "clients/big.py", "x = 1\n" * (MAX_FILE_LINES + 1))
    _write(tmp_path, "loadtest/exact.py", "x = 1\n" * MAX_FILE_LINES)
    offences = [str(o) for o in check_tree(tmp_path)]
    assert offences == [
        f"qwen_triton/deep/methods.py:2: function method: {MAX_FUNCTION_LINES + 6} lines (limit 60)",
        f"build/long_fn.py:4: function too_long: {MAX_FUNCTION_LINES + 1} lines (limit 60)",
        f"clients/big.py:1: {MAX_FILE_LINES + 1} lines (limit 400)",
    ]


def test_nested_functions_count_on_their_own_and_golden_and_other_folders_are_skipped(tmp_path):
    inner = _function("inner", MAX_FUNCTION_LINES, indent="    ")
    _write(tmp_path, "tools/nested.py", "def outer():\n" + inner + "    return inner\n")
    _write(tmp_path, "tools/golden/huge.py", "x = 1\n" * (MAX_FILE_LINES * 2))
    _write(tmp_path, "tests/huge.py", "x = 1\n" * (MAX_FILE_LINES * 2))  # tests/ is not held to the limits
    _write(tmp_path, "model_repo/m/1/model.py", "def broken(:\n")
    offences = [str(o) for o in check_tree(tmp_path)]
    assert "tests" not in FOLDERS
    assert offences == [
        "tools/nested.py:1: function outer: 63 lines (limit 60)",
        "tools/nested.py:2: function inner: 61 lines (limit 60)",
        "model_repo/m/1/model.py:1: does not parse (invalid syntax)",
    ]


def test_main_exit_status_and_output(tmp_path, capsys):
    assert main([str(tmp_path)]) == 0
    _write(tmp_path, "build/long.py", _function("f", MAX_FUNCTION_LINES))
    assert main([str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == "build/long.py:1: function f: 61 lines (limit 60)\n" and "1 over the size limits" in err
    assert main(["--help"]) == 2


def test_runs_as_a_module():
    run = subprocess.run([sys.executable, "-m", "tools.check_sizes", "/nonexistent-root"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0 and run.stdout == ""

"""The size limits of the house style: no .py file over 400 lines, no function over 60.

    python -m tools.check_sizes [ROOT]     (run by `make lint`; exit 1 when anything is over)

It walks the project's code folders (FOLDERS) under ROOT (default: the current directory) and prints
one line per offender, `path:line: what`. A function is measured from its `def` line to its last
line (decorators aside), nested functions and methods each on their own. Golden and generated files
are not code anyone edits and are left out (SKIPPED_DIRS).
"""
from __future__ import annotations

import ast
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

FOLDERS = ("qwen_triton", "build", "clients", "loadtest", "tools", "model_repo")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
# golden files, generated output and caches: not held to the limits
SKIPPED_DIRS = frozenset({"golden", "__pycache__", "generated"})


@dataclass(frozen=True)
class Offence:
    """One file or function over its limit."""

    path: Path
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def python_files(root: Path, folders: Sequence[str] = FOLDERS) -> Iterator[Path]:
    """Every .py file under root/<folder> for each folder, in path order, skipping SKIPPED_DIRS."""
    for folder in folders:
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            if not SKIPPED_DIRS.intersection(path.relative_to(base).parts[:-1]):
                yield path


def check_source(path: Path, text: str, max_file: int = MAX_FILE_LINES,
                 max_function: int = MAX_FUNCTION_LINES) -> list[Offence]:
    """The offences of one file's source `text` (a file that does not parse is one offence)."""
    offences = []
    lines = len(text.splitlines())
    if lines > max_file:
        offences.append(Offence(path, 1, f"{lines} lines (limit {max_file})"))
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        return [*offences, Offence(path, exc.lineno or 1, f"does not parse ({exc.msg})")]
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > max_function:
                offences.append(Offence(path, node.lineno, f"function {node.name}: {length} lines "
                                                           f"(limit {max_function})"))
    return sorted(offences, key=lambda o: o.line)


def check_tree(root: Path, folders: Sequence[str] = FOLDERS) -> list[Offence]:
    """Every offence under root's code folders, paths relative to root."""
    offences = []
    for path in python_files(root, folders):
        offences += check_source(path.relative_to(root), path.read_text(encoding="utf-8"))
    return offences


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print("usage: python -m tools.check_sizes [ROOT]", file=sys.stderr)
        return 2
    root = Path(args[0] if args else ".")
    offences = check_tree(root)
    for offence in offences:
        print(offence)
    if offences:
        print(f"{len(offences)} over the size limits ({MAX_FILE_LINES} lines a file, {MAX_FUNCTION_LINES} a "
              "function): split along real seams (docs/architecture.md)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Regenerate the flag tables of tensorrt_llm_flags.json from a TensorRT-LLM checkout at a tag:

    python tests/upstream/extract_trtllm_flags.py /path/to/TensorRT-LLM v0.19.0 > flags.json

Reads each program's argparse calls from the source at TAG (git show, so any checkout works) without
importing it: every `add_argument("--name", ...)`, whether it takes a value (not a store_true/store_false
action), and its literal `choices`; trtllm-build's plugin flags come from plugin.py's `cli_plugin_args` and the
types of `PluginConfig`'s fields (bool: enable/disable; str: a dtype, not pinned). Keep the "about" text of
the file this replaces, and set "release" / "image" to the pinned ones.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys

PROGRAMS = {
    "convert_checkpoint.py:qwen": "examples/models/core/qwen/convert_checkpoint.py",
    "convert_checkpoint.py:llama": "examples/models/core/llama/convert_checkpoint.py",
    "quantize.py": "examples/quantization/quantize.py",
    "trtllm-build": "tensorrt_llm/commands/build.py",
}
PLUGINS = "tensorrt_llm/plugin/plugin.py"


def _literal(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def argparse_flags(source: str) -> dict[str, dict]:
    """{flag: {"value": bool, "choices": [...]?}} of every add_argument call with literal option names."""
    flags: dict[str, dict] = {}
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"):
            continue
        names = [a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")]
        kw = {k.arg: k.value for k in node.keywords}
        action = _literal(kw["action"]) if "action" in kw else None
        row: dict = {"value": action not in ("store_true", "store_false")}
        if "nargs" in kw and _literal(kw["nargs"]) == "?":
            row["optional_value"] = True
        choices = _literal(kw["choices"]) if "choices" in kw else None
        if isinstance(choices, (list, tuple)):
            row["choices"] = [str(c) for c in choices if c is not None]
        for name in names:
            flags[name] = dict(row)
    return flags


def plugin_flags(source: str) -> dict[str, dict]:
    """trtllm-build's plugin flags: cli_plugin_args, typed by PluginConfig's annotations."""
    tree = ast.parse(source)
    names: list[str] = []
    types: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "cli_plugin_args" for t in node.targets):
            names = list(_literal(node.value))
        if isinstance(node, ast.ClassDef) and node.name == "PluginConfig":
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    types[item.target.id] = ast.unparse(item.annotation)
    return {f"--{n}": ({"value": True, "choices": ["enable", "disable"]} if types.get(n) == "bool" else {"value": True})
            for n in names}


def _show(checkout: str, tag: str, path: str) -> str:
    return subprocess.run(["git", "-C", checkout, "show", f"{tag}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def main(checkout: str, tag: str) -> None:
    programs = {}
    for name, path in PROGRAMS.items():
        programs[name] = {"source": {"repo": "NVIDIA/TensorRT-LLM", "path": path, "tag": tag},
                          "flags": argparse_flags(_show(checkout, tag, path))}
    programs["trtllm-build:plugins"] = {"source": {"repo": "NVIDIA/TensorRT-LLM", "path": PLUGINS, "tag": tag},
                                        "flags": plugin_flags(_show(checkout, tag, PLUGINS))}
    json.dump({"release": tag.lstrip("v"), "programs": programs}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "v0.19.0")

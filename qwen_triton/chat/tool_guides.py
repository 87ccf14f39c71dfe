"""Function calling, forced calls: the grammar a reply must follow when `tool_choice` is "required"
or names a function, for the engine's `guided_decoding_guide_type` / `guided_decoding_guide` inputs
(TensorRT-LLM's GuidedDecodingParams: json, json_schema, regex, ebnf_grammar).

The grammar is built with xgrammar: each tool's arguments schema becomes a JSON grammar
(`Grammar.from_json_schema`, compact `", "` / `": "` separators as the templates' `tojson` writes
them, no properties beyond the schema's), framed by the format's text, and the tools are joined as
alternatives. The reply is exactly one call:

* HERMES: `<tool_call>\\n{"name": "<tool>", "arguments": <its arguments>}\\n</tool_call>`
* REACT:  `Action: <tool>\\nAction Input: <its arguments>`

xgrammar (and torch, which it imports) is imported only when a guide is built.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequestError
from .tools import TOOLS_FIELD, FunctionTool, ToolFormat, ToolRequest

if TYPE_CHECKING:
    import xgrammar

GUIDE_EBNF = "ebnf_grammar"
SEPARATORS = (", ", ": ")


@dataclass(frozen=True)
class Guide:
    """A guided-decoding request: the guide's type and text, as the engine's two inputs take them."""

    type: str
    text: str


def tool_call_guide(request: ToolRequest, fmt: ToolFormat) -> Guide | None:
    """The grammar of a forced call (None unless `tool_choice` is "required" or a named function).

    Raises InvalidRequestError (field "tools") when xgrammar cannot turn a tool's parameters into a
    grammar.
    """
    if not request.choice.forced:
        return None
    import xgrammar as xgr

    tools = [t for t in request.tools if request.choice.mode == "required" or t.name == request.choice.name]
    grammars = [_call_grammar(xgr, tool, fmt) for tool in tools]
    grammar = grammars[0] if len(grammars) == 1 else xgr.Grammar.union(*grammars)
    return Guide(GUIDE_EBNF, str(grammar))


def _call_grammar(xgr: Any, tool: FunctionTool, fmt: ToolFormat) -> xgrammar.Grammar:
    parameters = dict(tool.parameters) or {"type": "object", "properties": {}}
    if fmt is ToolFormat.HERMES:
        schema = {"type": "object", "properties": {"name": {"const": tool.name}, "arguments": parameters},
                  "required": ["name", "arguments"]}
        head, tail = "<tool_call>\n", "\n</tool_call>"
    else:
        schema, head, tail = parameters, f"Action: {tool.name}\nAction Input: ", ""
    try:
        body = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, separators=SEPARATORS,
                                            strict_mode=True)
    except (RuntimeError, ValueError, TypeError) as exc:  # xgrammar's errors derive from these
        raise InvalidRequestError(TOOLS_FIELD, f"function {tool.name!r}: its parameters are not a JSON "
                                               f"schema that guided decoding supports: {exc}") from exc
    parts = [_literal(xgr, head), body] + ([_literal(xgr, tail)] if tail else [])
    return xgr.Grammar.concat(*parts)


def _literal(xgr: Any, text: str) -> xgrammar.Grammar:
    """A grammar of exactly `text` (EBNF string literal escapes: backslash, quote, newline)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return xgr.Grammar.from_ebnf(f'root ::= "{escaped}"')

"""How one settings value is read and checked: JSON values and command-line text (`--set key=value`)
into a field's type, and the field's rules (its dataclass metadata).

Types are those of the settings' annotations: bool, int, float, str, tuple[int, ...], each possibly
`| None`. No torch here.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from qwen_triton.config import check_rules


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the key."""


def check_field(f: dataclasses.Field, value: Any) -> None:
    """Range and choice rules from the field's metadata (types are checked by `check_type`)."""
    name, rules = f.name, f.metadata
    problem = check_rules(name, value, rules)
    if problem:
        raise SettingsError(problem)
    if value is None:
        return
    if rules.get("not_empty") and not str(value).strip():
        raise SettingsError(f"{name} must not be empty")
    if rules.get("ids"):
        bad = [v for v in value if v < 0]
        if bad:
            raise SettingsError(f"{name}: device ids must be >= 0, got {bad[0]}")
        if len(set(value)) != len(value):
            raise SettingsError(f"{name}: device ids must not repeat, got {list(value)}")


def type_name(tp: Any) -> str:
    """How an error message names a type."""
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def base_type(tp: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed) of a field annotation."""
    args = getattr(tp, "__args__", None)
    if args and type(None) in args and getattr(tp, "__origin__", None) is not tuple:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return tp, False


def is_int_tuple(tp: Any) -> bool:
    """Whether a type is tuple[int, ...] (lists of device ids)."""
    return getattr(tp, "__origin__", None) is tuple


def check_type(name: str, tp: Any, value: Any) -> None:
    """Raise SettingsError unless `value` is of the annotation `tp` (bool is no int, int no float)."""
    base, nullable = base_type(tp)
    if value is None:
        if not nullable:
            raise SettingsError(f"{name} must not be null")
        return
    if is_int_tuple(base):
        if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise SettingsError(f"{name} must be a list of integers, got {value!r}")
        return
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        ok = isinstance(value, float)
    else:
        ok = isinstance(value, base)
    if not ok:
        raise SettingsError(f"{name} must be {type_name(base)}{' or null' if nullable else ''}, got {value!r}")


TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
NULL_WORDS = ("none", "null")


def from_json(name: str, tp: Any, value: Any) -> Any:
    """A JSON value for a field: types must match (an integer is accepted for a number)."""
    base, nullable = base_type(tp)
    if value is None:
        if nullable:
            return None
        raise SettingsError(f"{name} must not be null")
    if is_int_tuple(base):
        if not isinstance(value, list | tuple):
            raise SettingsError(f"{name} must be a list of integers, got {value!r}")
        value = tuple(value)
    elif base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    check_type(name, tp, value)
    return value


def from_text(name: str, tp: Any, text: str) -> Any:
    """A command-line value for a field (`--set key=value`)."""
    base, nullable = base_type(tp)
    raw = text.strip()
    if nullable and raw.lower() in NULL_WORDS:
        return None
    try:
        if is_int_tuple(base):
            return tuple(int(v) for v in raw.split(",") if v.strip()) if raw else ()
        if base is bool:
            if raw.lower() in TRUE_WORDS:
                return True
            if raw.lower() in FALSE_WORDS:
                return False
            raise ValueError
        if base is int:
            return int(raw)
        if base is float:
            return float(raw)
    except ValueError:
        what = "a comma-separated list of integers" if is_int_tuple(base) else type_name(base)
        raise SettingsError(f"{name} must be {what}{' or none' if nullable else ''}, got {text!r}") from None
    return text  # strings are taken verbatim


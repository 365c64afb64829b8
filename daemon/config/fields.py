"""The building blocks of refscope's configuration sections: documented fields, type conversion, range checks.

Every key of every section (:mod:`refscope.daemon.config.sections`) is a dataclass field whose metadata holds its documentation
(:func:`field_doc`); :func:`convert_value` turns TOML values and command-line strings into the field's type and
:func:`check_types` / :func:`check_range` / :func:`check_endpoint` raise a :class:`ConfigError` that names the key.
"""
from __future__ import annotations

import math
import os
import re
import types
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ..errors import ConfigError

__all__ = ["ConfigError", "field_doc", "show_value", "convert_value", "check_types", "check_endpoint", "check_range"]

_ENDPOINT_RE = re.compile(r"^(tcp|ipc|inproc|ws|wss|pgm|epgm)://\S+$")


def field_doc(text: str, example: Any = None) -> dict[str, Any]:
    """Field metadata: the comment written above the key by :func:`config_to_toml`, and an example value shown
    (commented out) when the key is unset."""
    return {"doc": text, "example": example}


# ------------------------------------------------------------------------------------------ type handling


def show_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def convert_value(key: str, hint: Any, value: Any, *, from_text: bool) -> Any:
    """Check ``value`` against the type ``hint`` of ``key`` and return it normalised (int -> float, list ->
    tuple, str -> Path). With ``from_text``, strings are parsed for non-string types (command-line values)."""
    origin = get_origin(hint)
    args = get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        if from_text and isinstance(value, str) and value.strip().lower() in ("none", "null"):
            return None
        inner = [a for a in args if a is not type(None)]
        return convert_value(key, inner[0], value, from_text=from_text)
    if value is None:
        raise ConfigError(f"{key} must be set (it has no 'none' value)", key=key)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key} must be one of {allowed}, got {show_value(value)}", key=key)
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str):
            word = value.strip().lower()
            if word in ("true", "yes", "on", "1"):
                return True
            if word in ("false", "no", "off", "0"):
                return False
        raise ConfigError(f"{key} must be true or false, got {show_value(value)}", key=key)
    if hint is int:
        if from_text and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {show_value(value)}", key=key)
    if hint is float:
        if from_text and isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{key} must be a finite number, got {show_value(value)}", key=key)
            return number
        raise ConfigError(f"{key} must be a number, got {show_value(value)}", key=key)
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {show_value(value)}", key=key)
    if hint is Path:
        if isinstance(value, (str, os.PathLike)) and str(os.fspath(value)).strip():
            return Path(os.fspath(value)).expanduser()
        raise ConfigError(f"{key} must be a non-empty path string, got {show_value(value)}", key=key)
    if origin is tuple:  # tuple[str, ...]
        if from_text and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v.strip() for v in value):
            return tuple(value)
        raise ConfigError(f"{key} must be a list of non-empty strings, got {show_value(value)}", key=key)
    raise TypeError(f"{key}: unsupported configuration type {hint!r}")  # pragma: no cover - programming error


def check_types(obj: Any, prefix: str) -> None:
    """Type-check and normalise every field of a frozen section dataclass in place (strict: no parsing)."""
    hints = get_type_hints(type(obj))
    for f in fields(obj):
        key = f"{prefix}{f.name}"
        value = convert_value(key, hints[f.name], getattr(obj, f.name), from_text=False)
        if isinstance(value, Path):
            value = Path(os.path.abspath(value))
        object.__setattr__(obj, f.name, value)


def check_endpoint(key: str, value: str | None) -> None:
    if value is not None and not _ENDPOINT_RE.match(value):
        raise ConfigError(
            f"{key} must be a ZMQ endpoint such as 'tcp://127.0.0.1:5555' (tcp://, ipc:// or inproc://), got {show_value(value)}",
            key=key,
        )


def check_range(key: str, ok: bool, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {show_value(value)}", key=key)


# ----------------------------------------------------------------------------------------------- sections

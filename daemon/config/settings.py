"""The daemon's configuration: typed, frozen, validated once when it is loaded.

Sources, later ones winning key by key:

1. the defaults below;
2. a TOML file (``refscope daemon --config refscope.toml``) with top-level keys ``state_dir`` and ``log_level``
   and the tables ``[ingest]``, ``[model]``, ``[serve]``, ``[publish]``, ``[control]``, ``[monitor]``,
   ``[trainer]``, ``[security]``, ``[fusion]``;
3. command-line overrides, given as dotted keys: ``{"ingest.watch": "/data/in", "publish.out_dir": "/data/out"}``
   (a key without a dot is a top-level key). String values are parsed for the key's type (``"3"`` for an
   integer, ``"true"``/``"false"`` for a flag, ``"a,b"`` for a list, ``"none"`` to unset an optional key).

Rules checked by :func:`load_config` (each failure is a :class:`ConfigError` that names the key, where it came
from and what is allowed):

* unknown keys or tables are refused, with the list of allowed keys;
* every value must have the key's type and lie in its range (see the field docs);
* at least one ingest source is needed: ``ingest.watch`` or ``ingest.zmq_endpoint``;
* ``publish.out_dir``, ``state_dir`` and ``monitor.hook_dir`` must not be the watched folder or inside it: refscope never writes
  where the microscope writes, and its own outputs must not come back in as inputs;
* the sockets refscope binds (``ingest.zmq_endpoint``, ``publish.pub_endpoint``, ``control.endpoint``,
  ``control.events_endpoint``) must be distinct;
* a socket bound to an address other hosts can reach (anything but 127.0.0.0/8, ``::1``, ``localhost``,
  ``ipc://``, ``inproc://``; ``tcp://*`` and ``0.0.0.0`` included) needs CURVE keys: ``security.curve_dir`` and
  ``security.authorized_clients_dir`` in the ``[security]`` table (see :mod:`refscope.daemon.wire.curve`, ``refscope keys``), unless
  ``security.allow_insecure_remote`` is set.

Paths are made absolute: relative paths in a TOML file are relative to the file's folder, relative paths in
overrides to the current working directory; ``~`` is expanded. ``state_dir`` defaults to
``<publish.out_dir>/.refscope-state`` and, without an output folder, to ``$XDG_STATE_HOME/refscope``
(``~/.local/state/refscope``), see :func:`default_state_dir`. Every endpoint refscope binds defaults to
``127.0.0.1`` (this host only).

:func:`config_to_toml` writes a configuration back as a documented TOML file (a comment above every key) that
:func:`load_config` reads back to an equal configuration.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from .fields import ConfigError, check_range, convert_value, field_doc, show_value
from .sections import (HOOKS, METHODS, ControlConfig, FusionConfig, IngestConfig, ModelConfig, MonitorConfig,
                              PublishConfig, SecurityConfig, ServeConfig, TrainerConfig)
from ..wire.curve import is_loopback_endpoint
from .budget import MemoryBudget

__all__ = [
    "ConfigError",
    "IngestConfig",
    "ModelConfig",
    "ServeConfig",
    "PublishConfig",
    "ControlConfig",
    "MonitorConfig",
    "TrainerConfig",
    "SecurityConfig",
    "FusionConfig",
    "HOOKS",
    "DaemonConfig",
    "load_config",
    "config_to_toml",
    "default_state_dir",
    "SECTIONS",
    "METHODS",
    "LOG_LEVELS",
    "STATE_DIR_NAME",
]

LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR")
"""Accepted ``log_level`` values (case-insensitive)."""

STATE_DIR_NAME = ".refscope-state"
"""Name of the default state folder inside ``publish.out_dir``."""
_OVERRIDES = "command-line overrides"


SECTIONS: dict[str, type] = {
    "ingest": IngestConfig,
    "model": ModelConfig,
    "serve": ServeConfig,
    "publish": PublishConfig,
    "control": ControlConfig,
    "monitor": MonitorConfig,
    "trainer": TrainerConfig,
    "security": SecurityConfig,
    "fusion": FusionConfig,
}
"""TOML table name -> section dataclass."""

_TOP_DOCS = {
    "state_dir": field_doc("Folder for the catalogue, learned models and other state "
                      f"(default: <publish.out_dir>/{STATE_DIR_NAME}); must not be inside ingest.watch."),
    "log_level": field_doc('Logging threshold: "DEBUG", "INFO", "WARNING" or "ERROR".'),
}


def _inside(child: Path, parent: Path) -> bool:
    """True when ``child`` is ``parent`` or below it (symbolic links resolved)."""
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def _host_port(endpoint: str) -> str | None:
    """A key identifying the address an endpoint binds (None for ephemeral ``:*`` ports)."""
    if endpoint.endswith(":*") or endpoint.endswith(":0"):
        return None
    match = re.match(r"^tcp://(.+):(\d+)$", endpoint)
    if match:
        host = match.group(1)
        host = "127.0.0.1" if host == "localhost" else host
        return f"tcp://{host}:{int(match.group(2))}"
    return endpoint


@dataclass(frozen=True)
class DaemonConfig:
    """Everything ``refscope daemon`` needs (see the module docstring for the rules).

    Attributes:
        state_dir: folder for the catalogue, learned models and other state (absolute).
        ingest, model, serve, publish, control, monitor, trainer: the sections.
        security: who may connect (CURVE keys; see :class:`SecurityConfig`).
        fusion: multi-frame fusion of the live frames before enhancement (see :class:`FusionConfig`).
        log_level: ``"DEBUG"``, ``"INFO"``, ``"WARNING"`` or ``"ERROR"``.
    """

    state_dir: Path
    ingest: IngestConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    log_level: str = "INFO"
    security: SecurityConfig = field(default_factory=SecurityConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be an {cls.__name__}, got {show_value(getattr(self, name))}", key=name)
        state = convert_value("state_dir", Path, self.state_dir, from_text=False)
        object.__setattr__(self, "state_dir", Path(os.path.abspath(state)))
        level = convert_value("log_level", str, self.log_level, from_text=False).strip().upper()
        check_range("log_level", level in LOG_LEVELS, "one of " + ", ".join(repr(v) for v in LOG_LEVELS), self.log_level)
        object.__setattr__(self, "log_level", level)

        watch = self.ingest.watch
        if watch is not None:
            for key, path in (("publish.out_dir", self.publish.out_dir), ("state_dir", self.state_dir),
                              ("monitor.hook_dir", self.monitor.hook_dir)):
                if path is not None and _inside(path, watch):
                    raise ConfigError(
                        f"{key} ({path}) is inside the watched folder ingest.watch ({watch}): refscope never writes "
                        "where the microscope writes, and its outputs must not be read back as inputs; choose a "
                        "folder outside it",
                        key=key,
                    )
        for key, path in (("publish.out_dir", self.publish.out_dir), ("state_dir", self.state_dir)):
            if path is not None and path.exists() and not path.is_dir():
                raise ConfigError(f"{key} ({path}) exists and is not a folder", key=key)

        seen: dict[str, str] = {}
        for key, endpoint in (
            ("ingest.zmq_endpoint", self.ingest.zmq_endpoint),
            ("publish.pub_endpoint", self.publish.pub_endpoint),
            ("control.endpoint", self.control.endpoint),
            ("control.events_endpoint", self.control.events_endpoint),
        ):
            address = _host_port(endpoint) if endpoint is not None else None
            if address is None:
                continue
            if address in seen:
                raise ConfigError(
                    f"{key} ({endpoint}) is the same address as {seen[address]}; each socket needs its own endpoint",
                    key=key,
                )
            seen[address] = key
        try:
            self.memory_budget  # noqa: B018 - the budget must leave room for serving
        except ValueError as exc:
            raise ConfigError(str(exc), key="serve.max_memory_mb") from None
        self._check_exposure()

    @property
    def memory_budget(self) -> MemoryBudget:
        """The daemon's :class:`~refscope.daemon.config.budget.MemoryBudget`: ``serve.max_memory_mb`` with the
        trainer's share reserved when ``trainer.enabled``, the learner's always, and the fusion window's
        (``fusion.max_memory_mb``) when fusion may run."""
        fusion_mb = self.fusion.max_memory_mb if (self.fusion.enabled or self.fusion.auto_static_stage) else 0.0
        return MemoryBudget(self.serve.max_memory_mb, trainer=self.trainer.enabled, learner=True, fusion_mb=fusion_mb)

    def _check_exposure(self) -> None:
        """Refuse endpoints reachable from other hosts unless CURVE keys are configured (or insecure is allowed)."""
        if self.security.curve_dir is not None or self.security.allow_insecure_remote:
            return
        for key, endpoint in (
            ("ingest.zmq_endpoint", self.ingest.zmq_endpoint),
            ("publish.pub_endpoint", self.publish.pub_endpoint),
            ("control.endpoint", self.control.endpoint),
            ("control.events_endpoint", self.control.events_endpoint),
        ):
            if endpoint is not None and not is_loopback_endpoint(endpoint):
                raise ConfigError(
                    f"{key} ({endpoint}) accepts connections from other hosts, which requires CURVE authentication: "
                    "run `refscope keys generate DIR` and set security.curve_dir = DIR and "
                    "security.authorized_clients_dir = a folder of client public keys (`refscope keys authorize "
                    "CLIENT.key --to FOLDER`); or bind 127.0.0.1",
                    key=key,
                )


def default_state_dir(out_dir: Path | None) -> Path:
    """``<out_dir>/.refscope-state`` when there is an output folder, else ``$XDG_STATE_HOME/refscope``
    (``~/.local/state/refscope`` when XDG_STATE_HOME is unset)."""
    if out_dir is not None:
        return Path(out_dir) / STATE_DIR_NAME
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "refscope"


# ---------------------------------------------------------------------------------------------- loading


def _allowed_keys(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _unknown(key: str, origin: str, allowed: list[str]) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {key!r} in {origin}; allowed: {', '.join(allowed)}{hint}", key=key)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a TOML configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from exc


def load_config(path: str | os.PathLike[str] | None, overrides: Mapping[str, object] | None = None) -> DaemonConfig:
    """Read, merge and validate the daemon configuration.

    Args:
        path: TOML file, or None to use the defaults and ``overrides`` only.
        overrides: dotted keys (``"publish.out_dir"``, or ``"log_level"`` at top level) to values; they win
            over the file. Values that are None are ignored (an unset command-line option); strings are parsed
            for the key's type.

    Returns the validated :class:`DaemonConfig`; raises :class:`ConfigError` naming the key otherwise.
    """
    top_hints = {"state_dir": Path | None, "log_level": str}
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    top: dict[str, Any] = {}
    origins: dict[str, str] = {}
    section_hints = {name: get_type_hints(cls) for name, cls in SECTIONS.items()}

    def put(key: str, value: Any, origin: str, base: Path, from_text: bool) -> None:
        if "." in key:
            section, name = key.split(".", 1)
            if section not in SECTIONS:
                raise _unknown(key, origin, [f"{s}.*" for s in SECTIONS] + list(top_hints))
            if name not in section_hints[section]:
                raise _unknown(key, origin, _allowed_keys(SECTIONS[section]))
            hint = section_hints[section][name]
        else:
            section, name = None, key
            if name not in top_hints:
                allowed = list(top_hints) + [f"[{s}]" for s in SECTIONS]
                raise _unknown(key, origin, allowed)
            hint = top_hints[name]
        try:
            converted = convert_value(key, hint, value, from_text=from_text)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in {origin})", key=key) from None
        if isinstance(converted, Path) and not converted.is_absolute():
            converted = base / converted
        (values[section] if section else top)[name] = converted
        origins[key] = origin

    if path is not None:
        file = Path(os.path.abspath(Path(path).expanduser()))
        document = _read_toml(file)
        for name, content in document.items():
            if name in SECTIONS:
                if not isinstance(content, dict):
                    raise ConfigError(f"{name!r} in {file} must be a table [{name}], got {show_value(content)}", key=name)
                for key, value in content.items():
                    put(f"{name}.{key}", value, str(file), file.parent, False)
            else:
                if isinstance(content, dict):
                    raise _unknown(name, str(file), list(top_hints) + [f"[{s}]" for s in SECTIONS])
                put(name, content, str(file), file.parent, False)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        put(str(key), value, _OVERRIDES, Path.cwd(), True)

    try:
        sections = {name: cls(**values[name]) for name, cls in SECTIONS.items()}
        state_dir = top.get("state_dir") or default_state_dir(sections["publish"].out_dir)
        return DaemonConfig(state_dir=state_dir, log_level=top.get("log_level", "INFO"), **sections)
    except ConfigError as exc:
        where = f" (in {origins[exc.key]})" if exc.key in origins else ""
        raise ConfigError(f"{exc}{where}", key=exc.key) from None


# --------------------------------------------------------------------------------------------- writing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")  # pragma: no cover - every field type is handled above


def _key_lines(name: str, value: Any, meta: Mapping[str, Any]) -> list[str]:
    lines = [f"# {meta['doc']}"]
    if value is None:
        example = meta.get("example")
        lines.append(f"# {name} = {_toml_value(example)}" if example is not None else f"# {name} =")
    else:
        lines.append(f"{name} = {_toml_value(value)}")
    return lines


def config_to_toml(config: DaemonConfig) -> str:
    """``config`` as a TOML document with a comment above every key; unset optional keys are written
    commented out with an example value. :func:`load_config` reads it back to an equal configuration."""
    lines = [
        "# refscope daemon configuration (TOML), read by `refscope daemon --config FILE`.",
        "# Command-line options override it key by key (e.g. --watch sets ingest.watch).",
        "# Relative paths are relative to this file's folder. Every endpoint refscope binds",
        "# defaults to 127.0.0.1 (this host only); use tcp://0.0.0.0:PORT to listen on all interfaces",
        "# (which requires CURVE keys: see [security] and `refscope keys --help`).",
        "# At least one of ingest.watch and ingest.zmq_endpoint must be set.",
        "",
    ]
    lines += _key_lines("state_dir", config.state_dir, _TOP_DOCS["state_dir"])
    lines += _key_lines("log_level", config.log_level, _TOP_DOCS["log_level"])
    for name, cls in SECTIONS.items():
        section = getattr(config, name)
        lines += ["", f"[{name}]"]
        first_line = (cls.__doc__ or "").strip().splitlines()[0]
        lines.insert(len(lines) - 1, f"# --- {first_line}")
        for f in fields(section):
            lines += _key_lines(f.name, getattr(section, f.name), f.metadata)
    return "\n".join(lines) + "\n"

"""The daemon's configuration: typed, frozen, validated once when it is loaded.

Sources, later ones winning key by key:

1. the defaults below;
2. a TOML file (``refscope daemon --config refscope.toml``) with top-level keys ``state_dir`` and ``log_level``
   and the tables ``[ingest]``, ``[model]``, ``[serve]``, ``[publish]``, ``[control]``, ``[monitor]``;
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
  ``control.events_endpoint``) must be distinct.

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
import fnmatch
import json
import math
import os
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

from .errors import RefscopeError
from .frames import FrameRole
from .source_folder import FolderSourceConfig
from .source_zmq import ZmqSourceConfig

__all__ = [
    "ConfigError",
    "IngestConfig",
    "ModelConfig",
    "ServeConfig",
    "PublishConfig",
    "ControlConfig",
    "MonitorConfig",
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

METHODS: tuple[str, ...] = ("paired", "paired-faithful", "original", "bicubic")
"""Reconstruction methods (``model.method``)."""

LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR")
"""Accepted ``log_level`` values (case-insensitive)."""

STATE_DIR_NAME = ".refscope-state"
"""Name of the default state folder inside ``publish.out_dir``."""

_ENDPOINT_RE = re.compile(r"^(tcp|ipc|inproc|ws|wss|pgm|epgm)://\S+$")
_OVERRIDES = "command-line overrides"


class ConfigError(RefscopeError):
    """The configuration is invalid. The message names the key (``"model.scale"``), where the value came from
    and what is allowed; ``key`` holds the dotted key (None when the problem is not one key's, e.g. an
    unreadable file)."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def _doc(text: str, example: Any = None) -> dict[str, Any]:
    """Field metadata: the comment written above the key by :func:`config_to_toml`, and an example value shown
    (commented out) when the key is unset."""
    return {"doc": text, "example": example}


# ------------------------------------------------------------------------------------------ type handling


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _convert(key: str, hint: Any, value: Any, *, from_text: bool) -> Any:
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
        return _convert(key, inner[0], value, from_text=from_text)
    if value is None:
        raise ConfigError(f"{key} must be set (it has no 'none' value)", key=key)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key} must be one of {allowed}, got {_show(value)}", key=key)
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
        raise ConfigError(f"{key} must be true or false, got {_show(value)}", key=key)
    if hint is int:
        if from_text and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {_show(value)}", key=key)
    if hint is float:
        if from_text and isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{key} must be a finite number, got {_show(value)}", key=key)
            return number
        raise ConfigError(f"{key} must be a number, got {_show(value)}", key=key)
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {_show(value)}", key=key)
    if hint is Path:
        if isinstance(value, (str, os.PathLike)) and str(os.fspath(value)).strip():
            return Path(os.fspath(value)).expanduser()
        raise ConfigError(f"{key} must be a non-empty path string, got {_show(value)}", key=key)
    if origin is tuple:  # tuple[str, ...]
        if from_text and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v.strip() for v in value):
            return tuple(value)
        raise ConfigError(f"{key} must be a list of non-empty strings, got {_show(value)}", key=key)
    raise TypeError(f"{key}: unsupported configuration type {hint!r}")  # pragma: no cover - programming error


def _check_types(obj: Any, prefix: str) -> None:
    """Type-check and normalise every field of a frozen section dataclass in place (strict: no parsing)."""
    hints = get_type_hints(type(obj))
    for f in fields(obj):
        key = f"{prefix}{f.name}"
        value = _convert(key, hints[f.name], getattr(obj, f.name), from_text=False)
        if isinstance(value, Path):
            value = Path(os.path.abspath(value))
        object.__setattr__(obj, f.name, value)


def _check_endpoint(key: str, value: str | None) -> None:
    if value is not None and not _ENDPOINT_RE.match(value):
        raise ConfigError(
            f"{key} must be a ZMQ endpoint such as 'tcp://127.0.0.1:5555' (tcp://, ipc:// or inproc://), got {_show(value)}",
            key=key,
        )


def _check_range(key: str, ok: bool, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {_show(value)}", key=key)


# ----------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class IngestConfig:
    """Where frames come from: an acquisition folder, a ZMQ socket, or both.

    Attributes:
        watch: acquisition folder the microscope writes TIFF/PNG files to (never modified); None: no folder.
        zmq_endpoint: endpoint refscope binds to receive v1 frame messages (see ``protocol``); None: no socket.
        zmq_pattern: ``"pull"`` (lossless) or ``"sub"`` (newest frames, drops when behind).
        use_polling: scan ``watch`` periodically instead of using file-system events (network mounts).
        pixel_size_nm: pixel size for every frame, nm, overriding the files' metadata; None: from each file.
        hr_filename_pattern: file-name glob (case-insensitive) marking HR reference scans, e.g. ``"*_HR.tif"``.
        lr_filename_pattern: file-name glob marking live LR frames; files matching neither pattern are
            ``"auto"`` (the daemon decides from the pixel size).
    """

    SECTION: ClassVar[str] = "ingest"

    watch: Path | None = field(default=None, metadata=_doc(
        "Acquisition folder the microscope writes TIFF/PNG files to; never modified (unset: no folder watching).",
        "/data/sem/incoming"))
    zmq_endpoint: str | None = field(default=None, metadata=_doc(
        "ZMQ endpoint refscope binds to receive frames in the v1 wire format (unset: no ZMQ input).",
        "tcp://127.0.0.1:5555"))
    zmq_pattern: Literal["pull", "sub"] = field(default="pull", metadata=_doc(
        'Socket type for zmq_endpoint: "pull" (lossless) or "sub" (drops frames when refscope falls behind).'))
    use_polling: bool = field(default=False, metadata=_doc(
        "Scan the watched folder periodically instead of using file-system events (for network mounts)."))
    pixel_size_nm: float | None = field(default=None, metadata=_doc(
        "Pixel size in nm for every frame, overriding the files' metadata (unset: read from each file).", 5.0))
    hr_filename_pattern: str | None = field(default=None, metadata=_doc(
        "File-name glob (case-insensitive) marking HR reference scans (unset: decided from the pixel size).",
        "*_HR.tif"))
    lr_filename_pattern: str | None = field(default=None, metadata=_doc(
        "File-name glob (case-insensitive) marking live LR frames (unset: decided from the pixel size).",
        "*_LR.tif"))

    def __post_init__(self) -> None:
        _check_types(self, "ingest.")
        if self.watch is None and self.zmq_endpoint is None:
            raise ConfigError(
                "no ingest source: set ingest.watch (an acquisition folder) and/or ingest.zmq_endpoint", key="ingest.watch"
            )
        _check_endpoint("ingest.zmq_endpoint", self.zmq_endpoint)
        if self.pixel_size_nm is not None:
            _check_range("ingest.pixel_size_nm", self.pixel_size_nm > 0, "a positive number of nm", self.pixel_size_nm)
        for name in ("hr_filename_pattern", "lr_filename_pattern"):
            value = getattr(self, name)
            if value is not None:
                _check_range(f"ingest.{name}", bool(value.strip()) and "/" not in value,
                             "a non-empty file-name glob without '/'", value)
        if self.hr_filename_pattern is not None and self.hr_filename_pattern == self.lr_filename_pattern:
            raise ConfigError(
                f"ingest.lr_filename_pattern is the same as ingest.hr_filename_pattern ({self.hr_filename_pattern!r})",
                key="ingest.lr_filename_pattern",
            )

    def role_for(self, filename: str | os.PathLike[str]) -> FrameRole:
        """Role of a file from its name: ``"hr"`` if it matches ``hr_filename_pattern`` (checked first),
        ``"lr"`` if it matches ``lr_filename_pattern``, else ``"auto"``."""
        name = Path(filename).name.lower()
        if self.hr_filename_pattern and fnmatch.fnmatchcase(name, self.hr_filename_pattern.lower()):
            return "hr"
        if self.lr_filename_pattern and fnmatch.fnmatchcase(name, self.lr_filename_pattern.lower()):
            return "lr"
        return "auto"

    def folder_source_config(self, **options: Any) -> FolderSourceConfig:
        """The :class:`FolderSourceConfig` for ``watch`` (role ``"auto"``: apply :meth:`role_for` per frame);
        ``options`` set its other fields. Raises ConfigError when ``watch`` is unset."""
        if self.watch is None:
            raise ConfigError("ingest.watch is not set", key="ingest.watch")
        return FolderSourceConfig(path=self.watch, use_polling=self.use_polling, pixel_size_nm=self.pixel_size_nm,
                                  role="auto", **options)

    def zmq_source_config(self, **options: Any) -> ZmqSourceConfig:
        """The :class:`ZmqSourceConfig` binding ``zmq_endpoint``; ``options`` set its other fields. Raises
        ConfigError when ``zmq_endpoint`` is unset."""
        if self.zmq_endpoint is None:
            raise ConfigError("ingest.zmq_endpoint is not set", key="ingest.zmq_endpoint")
        return ZmqSourceConfig(endpoint=self.zmq_endpoint, pattern=self.zmq_pattern, bind=True, **options)


@dataclass(frozen=True)
class ModelConfig:
    """How the super-resolution model is learned from HR/LR pairs.

    Attributes:
        scale: output scale S (output pixel size = input pixel size / S), 2..8.
        method: ``"paired"`` (default), ``"paired-faithful"``, ``"original"`` or ``"bicubic"`` (no learning).
        library_size: number of patch pairs L kept in the library, >= 10.
        patch_size: patch edge n in output pixels, odd, >= 3; None: 4 * S + 1.
        sigma_n: filtering strength, in the model's normalised intensity units, > 0; None: the method's default
            (the paired method measures the noise of the frames).
    """

    SECTION: ClassVar[str] = "model"

    scale: int = field(default=2, metadata=_doc("Output scale S: enhanced frames have S times more pixels per side (2 to 8)."))
    method: Literal["paired", "paired-faithful", "original", "bicubic"] = field(default="paired", metadata=_doc(
        'Reconstruction method: "paired", "paired-faithful", "original" or "bicubic" (no learning).'))
    library_size: int = field(default=8000, metadata=_doc("Number of HR/LR patch pairs kept in the learned library (>= 10)."))
    patch_size: int | None = field(default=None, metadata=_doc(
        "Patch edge in output pixels, odd and >= 3 (unset: 9, the paper's n).", 9))
    sigma_n: float | None = field(default=None, metadata=_doc(
        "Filtering strength in normalised intensity units, > 0 (unset: the method's default).", 1.0))

    def __post_init__(self) -> None:
        _check_types(self, "model.")
        _check_range("model.scale", 2 <= self.scale <= 8, "an integer from 2 to 8", self.scale)
        _check_range("model.library_size", self.library_size >= 10, "an integer >= 10", self.library_size)
        if self.patch_size is not None:
            _check_range("model.patch_size", self.patch_size >= 3 and self.patch_size % 2 == 1,
                         "an odd integer >= 3", self.patch_size)
        if self.sigma_n is not None:
            _check_range("model.sigma_n", self.sigma_n > 0, "a number > 0", self.sigma_n)


@dataclass(frozen=True)
class ServeConfig:
    """How enhanced frames are computed (ONNX Runtime).

    Attributes:
        providers: ONNX Runtime execution providers in order of preference, e.g.
            ``("CUDAExecutionProvider", "CPUExecutionProvider")``; None: the GPU if available, else the CPU.
        intra_op_threads: CPU threads per inference, >= 0; 0: ONNX Runtime's default (all cores).
        tile: tile edge, input (LR) pixels, >= 64; larger frames are enhanced tile by tile.
        halo: overlap added around each tile, input pixels, >= 0 and < tile / 2.
    """

    SECTION: ClassVar[str] = "serve"

    providers: tuple[str, ...] | None = field(default=None, metadata=_doc(
        "ONNX Runtime execution providers in order of preference (unset: the GPU if available, else the CPU).",
        ("CUDAExecutionProvider", "CPUExecutionProvider")))
    intra_op_threads: int = field(default=0, metadata=_doc("CPU threads per inference; 0: ONNX Runtime's default (all cores)."))
    tile: int = field(default=1024, metadata=_doc("Tile edge in input pixels; larger frames are enhanced tile by tile (>= 64)."))
    halo: int = field(default=32, metadata=_doc("Overlap around each tile in input pixels (>= 0, less than tile / 2)."))

    def __post_init__(self) -> None:
        _check_types(self, "serve.")
        if self.providers is not None:
            _check_range("serve.providers", len(self.providers) > 0 and len(set(self.providers)) == len(self.providers),
                         "a non-empty list of distinct provider names", list(self.providers))
        _check_range("serve.intra_op_threads", self.intra_op_threads >= 0, "an integer >= 0", self.intra_op_threads)
        _check_range("serve.tile", self.tile >= 64, "an integer >= 64", self.tile)
        _check_range("serve.halo", 0 <= self.halo and 2 * self.halo < self.tile,
                     f"an integer >= 0 and less than tile / 2 = {self.tile / 2:g}", self.halo)


@dataclass(frozen=True)
class PublishConfig:
    """Where enhanced frames go.

    Attributes:
        out_dir: folder for enhanced TIFFs (``<stem>_x<S>.tif``); None: publish on ``pub_endpoint`` only.
        pub_endpoint: endpoint of the PUB socket streaming enhanced frames (lossy: viewers get the newest).
        pub_hwm: frames queued per viewer before new ones are dropped (>= 1).
        output_queue_limit: enhanced frames waiting to be written to ``out_dir`` before ingest is held back
            (>= 1; a frame is dropped, counted and logged only if the queue stays full).
        write_confidence: also write ``<stem>_x<S>_confidence.tif`` beside each enhanced frame.
        stream_raw: also publish each raw LR frame (role ``"lr"``) on ``pub_endpoint``, just before its enhancement.
        stream_confidence: also publish each confidence map (role ``"confidence"``) just after its enhancement.
    """

    SECTION: ClassVar[str] = "publish"

    out_dir: Path | None = field(default=None, metadata=_doc(
        "Folder for enhanced TIFFs <stem>_x<S>.tif; must not be inside ingest.watch (unset: stream only).",
        "/data/sem/enhanced"))
    pub_endpoint: str = field(default="tcp://127.0.0.1:5561", metadata=_doc(
        "ZMQ PUB endpoint streaming enhanced frames to viewers (lossy: viewers always get the newest frame)."))
    pub_hwm: int = field(default=4, metadata=_doc("Frames queued per viewer before new ones are dropped (>= 1)."))
    output_queue_limit: int = field(default=64, metadata=_doc(
        "Enhanced frames waiting to be written to out_dir; beyond this the pipeline waits, then drops (>= 1)."))
    write_confidence: bool = field(default=False, metadata=_doc(
        "Also write <stem>_x<S>_confidence.tif beside each enhanced frame."))
    stream_raw: bool = field(default=True, metadata=_doc(
        'Also publish each raw LR frame (role "lr") on pub_endpoint, just before its enhanced frame.'))
    stream_confidence: bool = field(default=True, metadata=_doc(
        'Also publish each confidence map (role "confidence", float32 in [0, 1]) just after its enhanced frame.'))

    def __post_init__(self) -> None:
        _check_types(self, "publish.")
        _check_endpoint("publish.pub_endpoint", self.pub_endpoint)
        _check_range("publish.pub_hwm", self.pub_hwm >= 1, "an integer >= 1", self.pub_hwm)
        _check_range("publish.output_queue_limit", self.output_queue_limit >= 1, "an integer >= 1", self.output_queue_limit)


@dataclass(frozen=True)
class ControlConfig:
    """The daemon's own sockets for the TUI and scripts.

    Attributes:
        endpoint: REP endpoint for commands (status, reference requests...).
        events_endpoint: PUB endpoint of JSON events (pair learned, model promoted...).
    """

    SECTION: ClassVar[str] = "control"

    endpoint: str = field(default="tcp://127.0.0.1:5560", metadata=_doc("ZMQ REP endpoint for control commands (TUI, scripts)."))
    events_endpoint: str = field(default="tcp://127.0.0.1:5562", metadata=_doc(
        "ZMQ PUB endpoint of JSON events (pair_learned, model_promoted, ...)."))

    def __post_init__(self) -> None:
        _check_types(self, "control.")
        _check_endpoint("control.endpoint", self.endpoint)
        _check_endpoint("control.events_endpoint", self.events_endpoint)


HOOKS: tuple[str, ...] = ("log", "file", "zmq", "script")
"""How a reference request reaches the microscope (``monitor.hook``), see :mod:`.reference_hooks`."""


@dataclass(frozen=True)
class MonitorConfig:
    """Quality drift of live frames, confidence maps and reference requests (see :mod:`.monitor`).

    Each signal is raised when its value (the median over the last ``window`` frames) reaches ``*_on`` and
    cleared when it falls back to ``*_off`` (hysteresis: ``*_off < *_on``). The held-out score works the other
    way round (low is bad): raised at or below ``held_out_on_db``, cleared at or above ``held_out_off_db``.

    Attributes:
        enabled: measure the signals and the confidence map of every enhanced frame (needs a learned model).
        window: frames whose median is compared with the thresholds (>= 1).
        coverage_on, coverage_off: library coverage, ratio of the frame's median support distance to the
            training frames' (1: like the training frames).
        texture_on, texture_off: distance of the frame's patch-feature statistics from the training frames'
            (0: alike; up to ~0.25 for other frames of the same real sample).
        intensity_on, intensity_off: shift of mean/5th/95th percentile, in training standard deviations.
        focus_on, focus_off: loss of sharpness, 0 (as sharp as the training frames) to 1.
        held_out_on_db, held_out_off_db: the serving model's held-out ΔPSNR over bicubic on a new reference
            before learning from it, dB.
        request_on_drift: emit a reference request when a frame signal is raised.
        request_without_model: request a first reference as soon as frames arrive while no model serves.
        request_timeout_s: an unanswered request stops blocking new ones after this many seconds.
        request_interval_s: least time between two automatic requests, seconds.
        region_fraction: side of the requested region as a fraction of the LR field's (0.5: a quarter of it).
        confidence_stride: spacing of the measured patches on the output grid, px (>= 1).
        hook: how a request reaches the microscope: ``"log"``, ``"file"`` (a JSON file in ``hook_dir``),
            ``"zmq"`` (a PUSH message to ``hook_endpoint``) or ``"script"`` (``hook_command`` with the JSON on stdin).
        hook_dir, hook_endpoint, hook_command: the hook's target (required by its hook).
        hook_timeout_s: longest a script hook may run, seconds.
    """

    SECTION: ClassVar[str] = "monitor"

    enabled: bool = field(default=True, metadata=_doc(
        "Measure quality drift and the confidence map of every enhanced frame (once a model is learned)."))
    window: int = field(default=3, metadata=_doc("Frames whose median signal is compared with the thresholds (>= 1)."))
    coverage_on: float = field(default=1.5, metadata=_doc(
        "Raise 'coverage' when the frame's median support distance reaches this multiple of the training frames'."))
    coverage_off: float = field(default=1.25, metadata=_doc("Clear 'coverage' at or below this ratio (< coverage_on)."))
    texture_on: float = field(default=0.35, metadata=_doc(
        "Raise 'texture' when the frame's patch statistics are this far from the training frames' (0: alike)."))
    texture_off: float = field(default=0.2, metadata=_doc("Clear 'texture' at or below this distance (< texture_on)."))
    intensity_on: float = field(default=1.0, metadata=_doc(
        "Raise 'intensity' when mean/percentiles shift by this many training standard deviations."))
    intensity_off: float = field(default=0.6, metadata=_doc("Clear 'intensity' at or below this shift (< intensity_on)."))
    focus_on: float = field(default=0.35, metadata=_doc(
        "Raise 'focus' when sharpness has dropped by this fraction of the training frames' (0 to 1)."))
    focus_off: float = field(default=0.2, metadata=_doc("Clear 'focus' at or below this loss (< focus_on)."))
    held_out_on_db: float = field(default=0.2, metadata=_doc(
        "Raise 'held_out' when the serving model gains at most this many dB over bicubic on a new reference."))
    held_out_off_db: float = field(default=0.4, metadata=_doc(
        "Clear 'held_out' when the serving model gains at least this many dB (> held_out_on_db)."))
    request_on_drift: bool = field(default=True, metadata=_doc("Request an HR reference when a frame signal is raised."))
    request_without_model: bool = field(default=True, metadata=_doc(
        "Request a first HR reference as soon as LR frames arrive while no model is serving."))
    request_timeout_s: float = field(default=120.0, metadata=_doc(
        "Seconds after which an unanswered request no longer blocks new ones (> 0)."))
    request_interval_s: float = field(default=10.0, metadata=_doc(
        "Least seconds between two automatic reference requests (>= 0)."))
    region_fraction: float = field(default=0.5, metadata=_doc(
        "Side of the requested region as a fraction of the LR field's side (0.5: a quarter of its area)."))
    confidence_stride: int = field(default=6, metadata=_doc(
        "Spacing of the patches measured for the confidence map, output pixels (>= 1)."))
    hook: Literal["log", "file", "zmq", "script"] = field(default="log", metadata=_doc(
        'How a reference request reaches the microscope: "log", "file" (JSON in hook_dir), "zmq" (PUSH to '
        'hook_endpoint) or "script" (hook_command, JSON on stdin).'))
    hook_dir: Path | None = field(default=None, metadata=_doc(
        'Folder receiving request-<id>.json files (hook = "file"); not inside ingest.watch.', "/data/sem/requests"))
    hook_endpoint: str | None = field(default=None, metadata=_doc(
        'ZMQ endpoint the request is PUSHed to (hook = "zmq"; refscope connects).', "tcp://127.0.0.1:5570"))
    hook_command: tuple[str, ...] | None = field(default=None, metadata=_doc(
        'Command run with the request JSON on stdin (hook = "script").', ("/opt/sem/request_reference.sh",)))
    hook_timeout_s: float = field(default=30.0, metadata=_doc("Longest a script hook may run, seconds (> 0)."))

    def __post_init__(self) -> None:
        _check_types(self, "monitor.")
        _check_range("monitor.window", self.window >= 1, "an integer >= 1", self.window)
        for name in ("coverage", "texture", "intensity", "focus"):
            on, off = getattr(self, f"{name}_on"), getattr(self, f"{name}_off")
            _check_range(f"monitor.{name}_on", on > 0, "a number > 0", on)
            _check_range(f"monitor.{name}_off", 0 <= off < on, f"a number >= 0 and below {name}_on = {on:g}", off)
        _check_range("monitor.held_out_off_db", self.held_out_off_db > self.held_out_on_db,
                     f"above held_out_on_db = {self.held_out_on_db:g}", self.held_out_off_db)
        _check_range("monitor.request_timeout_s", self.request_timeout_s > 0, "a number of seconds > 0",
                     self.request_timeout_s)
        _check_range("monitor.request_interval_s", self.request_interval_s >= 0, "a number of seconds >= 0",
                     self.request_interval_s)
        _check_range("monitor.region_fraction", 0 < self.region_fraction <= 1, "a fraction in (0, 1]",
                     self.region_fraction)
        _check_range("monitor.confidence_stride", self.confidence_stride >= 1, "an integer >= 1",
                     self.confidence_stride)
        _check_range("monitor.hook_timeout_s", self.hook_timeout_s > 0, "a number of seconds > 0", self.hook_timeout_s)
        _check_endpoint("monitor.hook_endpoint", self.hook_endpoint)
        needs = {"file": ("hook_dir", self.hook_dir), "zmq": ("hook_endpoint", self.hook_endpoint),
                 "script": ("hook_command", self.hook_command)}
        if self.hook in needs and needs[self.hook][1] is None:
            name = needs[self.hook][0]
            raise ConfigError(f"monitor.hook = {self.hook!r} needs monitor.{name}", key=f"monitor.{name}")


SECTIONS: dict[str, type] = {
    "ingest": IngestConfig,
    "model": ModelConfig,
    "serve": ServeConfig,
    "publish": PublishConfig,
    "control": ControlConfig,
    "monitor": MonitorConfig,
}
"""TOML table name -> section dataclass."""

_TOP_DOCS = {
    "state_dir": _doc("Folder for the catalogue, learned models and other state "
                      f"(default: <publish.out_dir>/{STATE_DIR_NAME}); must not be inside ingest.watch."),
    "log_level": _doc('Logging threshold: "DEBUG", "INFO", "WARNING" or "ERROR".'),
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
        ingest, model, serve, publish, control, monitor: the sections.
        log_level: ``"DEBUG"``, ``"INFO"``, ``"WARNING"`` or ``"ERROR"``.
    """

    state_dir: Path
    ingest: IngestConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be an {cls.__name__}, got {_show(getattr(self, name))}", key=name)
        state = _convert("state_dir", Path, self.state_dir, from_text=False)
        object.__setattr__(self, "state_dir", Path(os.path.abspath(state)))
        level = _convert("log_level", str, self.log_level, from_text=False).strip().upper()
        _check_range("log_level", level in LOG_LEVELS, "one of " + ", ".join(repr(v) for v in LOG_LEVELS), self.log_level)
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
            converted = _convert(key, hint, value, from_text=from_text)
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
                    raise ConfigError(f"{name!r} in {file} must be a table [{name}], got {_show(content)}", key=name)
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
        "# defaults to 127.0.0.1 (this host only); use tcp://0.0.0.0:PORT to listen on all interfaces.",
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

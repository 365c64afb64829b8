"""The manifest that travels with every served ONNX model: what it is and how to feed it.

A :class:`ModelManifest` is a frozen, hashable record. It says which method produced the model
(``kind``), its integer upscaling factor ``scale`` (S), the affine input normalisation the network
was trained with, how it tiles (receptive radius ``halo`` and window alignment ``align``, when known), and
provenance (version, creation time, ONNX opset, validation metrics).

Normalisation convention (intensities in the caller's units, e.g. raw detector counts)::

    x_norm = (x - input_offset) * input_scale          # applied to the network input
    y      = y_norm / input_scale + input_offset        # applied to the network output

so a network trained on images mapped to roughly [0, 1] from 8-bit data has
``input_offset = 0.0`` and ``input_scale = 1 / 255``.

This module is pure: it converts between manifests, ``dict`` and JSON text; the daemon decides
where (and how atomically) the JSON is stored.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .errors import RefscopeModelError
from .self_ensemble import ENSEMBLE_SIZES as _ENSEMBLE_SIZES

__all__ = ["ManifestError", "ModelManifest", "KNOWN_KINDS", "MANIFEST_SCHEMA", "utc_now_iso"]

#: Value of the ``"schema"`` key written by :meth:`ModelManifest.to_json`.
MANIFEST_SCHEMA = "refscope.model-manifest/1"

#: Model kinds produced by refscope today. Other lowercase ``[a-z0-9-]`` names are accepted so
#: that new methods do not need a manifest change, but these are the ones the daemon knows.
KNOWN_KINDS: tuple[str, ...] = ("paired-library", "compact", "fullres", "emsr", "blend", "bicubic")

_KIND_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class ManifestError(RefscopeModelError):
    """A model manifest is malformed; the message names the offending key."""


def utc_now_iso() -> str:
    """Current UTC time as an ISO 8601 string with seconds resolution, e.g. ``2026-11-22T07:04:00+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, (float, np.floating)))


def _freeze_validation(value: Any) -> tuple[tuple[str, float], ...]:
    """Turn a mapping or iterable of (name, value) pairs into a sorted tuple of (str, float) pairs."""
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        items = []
        for item in value:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise ManifestError(
                    f"validation: expected a mapping of metric name -> number or (name, value) pairs, got item {item!r}"
                )
            items.append((item[0], item[1]))
    else:
        raise ManifestError(f"validation: expected a mapping of metric name -> number, got {type(value).__name__}")
    frozen: dict[str, float] = {}
    for name, metric in items:
        if not isinstance(name, str) or not name:
            raise ManifestError(f"validation: metric names must be non-empty strings, got {name!r}")
        if not _is_number(metric) or not math.isfinite(float(metric)):
            raise ManifestError(f"validation[{name!r}]: must be a finite number, got {metric!r}")
        if name in frozen:
            raise ManifestError(f"validation: metric {name!r} is given twice")
        frozen[name] = float(metric)
    return tuple(sorted(frozen.items()))


@dataclass(frozen=True)
class ModelManifest:
    """Description of one served model; frozen and hashable.

    Parameters
    ----------
    kind : str
        Method that produced the model, lowercase ``[a-z0-9-]``; see :data:`KNOWN_KINDS`
        (``"paired-library"``, ``"compact"``, ``"fullres"``, ``"emsr"``, ``"bicubic"``).
    scale : int
        Integer upscaling factor S >= 1: the model maps (N, 1, H, W) to (N, 1, S*H, S*W).
    input_offset : float
        Offset subtracted from raw intensities before the network, in the caller's intensity units.
    input_scale : float
        Finite non-zero factor applied after the offset: ``x_norm = (x - input_offset) * input_scale``.
        The inverse ``y = y_norm / input_scale + input_offset`` maps the output back.
    library_size : int or None
        Number of (LR, HR) patch pairs the model was learned from, ``None`` when not applicable.
    version : str
        Free-form non-empty model version (e.g. ``"3"`` or ``"2026-11-22a"``).
    created : str
        Creation time, ISO 8601 (``datetime.fromisoformat`` must accept it). Defaults to now, UTC.
    opset : int
        ONNX default-domain opset the model is stamped with.
    validation : tuple of (str, float)
        Validation metrics, e.g. ``(("psnr_db", 31.2), ("ssim", 0.91))``. A mapping may be passed;
        it is stored as name-sorted pairs so that the manifest stays hashable.
        Use :meth:`validation_dict` for a ``dict`` view.
    workspace_bytes_per_px : float or None
        Peak working memory of one inference, bytes per input pixel of the (tile) window it is run on: the
        model's own estimate, used to derive tile sizes from a memory budget
        (:func:`refscope.models.tiling.tile_for_budget`). ``None`` (models exported before it was recorded):
        the runtime assumes :func:`refscope.models.tiling.default_workspace_bytes_per_px`.
    halo : int or None
        The model's receptive radius, LR (input) px: an output pixel depends on input pixels at most this far
        away, so tiles with this much context reproduce the untiled output (:func:`refscope.models.tiling.
        process_tiled`). ``None`` (models exported before it was recorded, or external models): not known; the
        server chooses a context (``serve.halo``).
    align : int or None
        Tile windows must start at multiples of this many input px for the model to see the grid an untiled
        call sees (a stride-2 head: 2; window attention of side M: M; the paired library's query lattice:
        ``stride / gcd(S, stride)``; 1: any origin). ``None``: not known (as ``halo``).
    max_ensemble : int or None
        The most geometric self-ensemble passes the model may be served with (1, 2, 4 or 8,
        :data:`refscope.models.self_ensemble.ENSEMBLE_SIZES`): a network trained on the scan's own orientation
        is not symmetric under flips, and averaging flipped passes would undo what it learned (1).
        ``None``: no limit recorded (models exported before it was recorded: any).

    Notes
    -----
    ``halo``, ``align`` and ``max_ensemble`` are written by :meth:`to_dict` only when known, so a manifest without
    them reads and writes exactly as before they existed.
    """

    kind: str
    scale: int
    input_offset: float = 0.0
    input_scale: float = 1.0
    library_size: int | None = None
    version: str = "1"
    created: str = field(default_factory=utc_now_iso)
    opset: int = 17
    validation: tuple[tuple[str, float], ...] = ()
    workspace_bytes_per_px: float | None = None
    halo: int | None = None
    align: int | None = None
    max_ensemble: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not _KIND_RE.match(self.kind):
            raise ManifestError(
                f"kind: must be a lowercase name such as {', '.join(map(repr, KNOWN_KINDS))}, got {self.kind!r}"
            )
        if not _is_int(self.scale) or self.scale < 1:
            raise ManifestError(f"scale: must be an integer >= 1, got {self.scale!r}")
        object.__setattr__(self, "scale", int(self.scale))
        for name in ("input_offset", "input_scale"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(float(value)):
                raise ManifestError(f"{name}: must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.input_scale == 0.0:
            raise ManifestError("input_scale: must be non-zero (x_norm = (x - input_offset) * input_scale)")
        if self.library_size is not None:
            if not _is_int(self.library_size) or self.library_size < 0:
                raise ManifestError(f"library_size: must be a non-negative integer or null, got {self.library_size!r}")
            object.__setattr__(self, "library_size", int(self.library_size))
        if not isinstance(self.version, str) or not self.version.strip():
            raise ManifestError(f"version: must be a non-empty string, got {self.version!r}")
        if not isinstance(self.created, str):
            raise ManifestError(f"created: must be an ISO 8601 string, got {self.created!r}")
        try:
            datetime.fromisoformat(self.created)
        except ValueError:
            raise ManifestError(
                f"created: {self.created!r} is not an ISO 8601 time; use e.g. '2026-11-22T07:04:00+00:00'"
            ) from None
        if not _is_int(self.opset) or self.opset < 1:
            raise ManifestError(f"opset: must be a positive integer, got {self.opset!r}")
        object.__setattr__(self, "opset", int(self.opset))
        object.__setattr__(self, "validation", _freeze_validation(self.validation))
        if self.workspace_bytes_per_px is not None:
            value = self.workspace_bytes_per_px
            if not _is_number(value) or not math.isfinite(float(value)) or float(value) <= 0:
                raise ManifestError(f"workspace_bytes_per_px: must be a finite number > 0 or null, got {value!r}")
            object.__setattr__(self, "workspace_bytes_per_px", float(value))
        for name, least in (("halo", 0), ("align", 1)):
            value = getattr(self, name)
            if value is not None:
                if not _is_int(value) or value < least:
                    raise ManifestError(f"{name}: must be an integer >= {least} (input px) or null, got {value!r}")
                object.__setattr__(self, name, int(value))
        if self.max_ensemble is not None:
            if not _is_int(self.max_ensemble) or self.max_ensemble not in _ENSEMBLE_SIZES:
                raise ManifestError(f"max_ensemble: must be one of {', '.join(map(str, _ENSEMBLE_SIZES))} or null, "
                                    f"got {self.max_ensemble!r}")
            object.__setattr__(self, "max_ensemble", int(self.max_ensemble))

    # -- views -----------------------------------------------------------------------------------------------

    def validation_dict(self) -> dict[str, float]:
        """Validation metrics as a new ``dict`` (metric name -> value)."""
        return dict(self.validation)

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """Map raw intensities to network units, ``(x - input_offset) * input_scale``, as float32 (same shape)."""
        out = np.asarray(image, dtype=np.float32) - np.float32(self.input_offset)
        out *= np.float32(self.input_scale)
        return out

    def denormalise(self, output: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`normalise`: ``y_norm / input_scale + input_offset``, as float32 (same shape)."""
        out = np.asarray(output, dtype=np.float32) / np.float32(self.input_scale)
        out += np.float32(self.input_offset)
        return out

    # -- serialisation ---------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready ``dict``; ``validation`` becomes an object and a ``"schema"`` key is added."""
        out: dict[str, Any] = {"schema": MANIFEST_SCHEMA}
        for f in fields(self):
            out[f.name] = getattr(self, f.name)
        out["validation"] = self.validation_dict()
        for name in ("halo", "align", "max_ensemble"):  # unknown: left out, as manifests written before them
            if out[name] is None:
                del out[name]
        return out

    def to_json(self, *, indent: int | None = 2) -> str:
        """Serialise to JSON text (UTF-8 safe, keys in field order, no NaN)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelManifest:
        """Build a manifest from a ``dict`` such as :meth:`to_dict` returns.

        Raises
        ------
        ManifestError
            For a non-mapping, an unknown or missing key, a wrong schema or a bad value; the message names the key.
        """
        if not isinstance(data, Mapping):
            raise ManifestError(f"manifest: expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        schema = data.pop("schema", MANIFEST_SCHEMA)
        if schema != MANIFEST_SCHEMA:
            raise ManifestError(f"schema: expected {MANIFEST_SCHEMA!r}, got {schema!r}; this refscope cannot read it")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ManifestError(f"{unknown[0]}: unknown manifest key (known keys: {', '.join(names)})")
        required = ("kind", "scale", "version", "created", "opset")
        missing = [name for name in required if name not in data]
        if missing:
            raise ManifestError(f"{missing[0]}: required manifest key is missing")
        if "validation" in data and data["validation"] is None:
            data["validation"] = ()
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelManifest:
        """Parse JSON text written by :meth:`to_json`; raises :class:`ManifestError` naming the bad key."""
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise ManifestError(f"manifest: not valid JSON ({exc}); regenerate it with ModelManifest.to_json()") from None
        return cls.from_dict(data)

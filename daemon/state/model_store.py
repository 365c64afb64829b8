"""Save and load a fitted paired model (:class:`~refscope.models.pipeline.FittedModel`) in a state folder.

A model is the state named ``library`` of :mod:`refscope.daemon.state.store`: ``library.npz`` holds the
library arrays (:meth:`PairedLibrary.to_arrays`: keys, values, categories, centroids, reservoir counts,
config) and ``library.json`` a checksummed manifest::

    {"kind": "paired-library", "format": 1, "scale": 2,
     "intensity": {"low": ..., "high": ...},        # LR units mapped onto library units 0-255
     "noise_sigma": ...,                             # measured LR noise, library units
     "paired": {...},                                # PairedConfig of the default reconstruction
     "geometries": [{"offset_yx": ..., "factor_yx": ..., "rotation_deg": ..., "score": ...}, ...],
     "forward": {"radius": r, "kernel": [[...]], "offset": c, "pixels": n} or null,   # HR -> LR model (consistency)
     "safe": {"sigma_px": s, "delta_db": d, "q_ref": q} or null,   # safe baseline (models.baseline); absent: none
     "library_size": L, "sources": ["lr.tif", "hr.tif"], "created": "2024-...Z"}

The per-category regressors of the ``paired`` method are derived from the library, so they are not stored:
they are refitted (deterministically) on first use after loading.

Before any model is promoted, the safe baseline that serves instead of bicubic (the first reference's, when it
beat what was learned from it) is kept in ``served_baseline.json`` (:func:`save_served_baseline`), so that a
restarted daemon serves it again rather than falling back to bicubic::

    {"kind": "served-baseline", "scale": 2, "safe": {"sigma_px": s, "delta_db": d, "q_ref": q},
     "source": "ref.tif", "created": "2024-...Z"}
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from refscope.models.baseline import SafeBaseline
from refscope.models.consistency import ForwardModel
from refscope.models.errors import RefscopeModelError
from refscope.models.library import PairedLibrary
from refscope.models.nlm import PairedConfig
from refscope.models.pipeline import FittedModel, IntensityScale
from refscope.models.registration import PairGeometry

from ..atomic import atomic_write_json
from ..errors import StateError
from .model_domain import ModelDomain
from .store import has_state, load_arrays, save_arrays, state_paths

__all__ = ["MODEL_STATE_NAME", "MODEL_KIND", "MODEL_FORMAT", "save_model", "load_model"]

MODEL_STATE_NAME = "library"
"""State name of the model inside a state folder (``library.npz`` + ``library.json``)."""
MODEL_KIND = "paired-library"
MODEL_FORMAT = 1


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: unknown values (e.g. a geometry's NCC score) are stored as null."""
    value = float(value)
    return value if math.isfinite(value) else None


def _geometry_to_json(geometry: PairGeometry) -> dict[str, Any]:
    data = dataclasses.asdict(geometry)
    data["score"] = _finite_or_none(geometry.score)
    return data


def _geometry_from_json(data: dict[str, Any]) -> PairGeometry:
    score = data.get("score")
    return PairGeometry(offset_yx=tuple(data["offset_yx"]), factor_yx=tuple(data["factor_yx"]),
                        rotation_deg=float(data.get("rotation_deg", 0.0)),
                        score=float("nan") if score is None else float(score))


def _forward_to_json(model: ForwardModel | None) -> dict | None:
    if model is None:
        return None
    return {"radius": int(model.radius), "kernel": np.asarray(model.kernel, float).tolist(),
            "offset": float(model.offset), "pixels": int(model.pixels)}


def _forward_from_json(data: dict | None, scale: int) -> ForwardModel | None:
    """The saved forward model (None: none saved, e.g. a model from before it existed)."""
    if data is None:
        return None
    return ForwardModel(scale, int(data["radius"]), np.asarray(data["kernel"], dtype=np.float64),
                        float(data["offset"]), int(data.get("pixels", 0)))


def save_model(state_dir: str | os.PathLike[str], model: FittedModel, *, sources: list[str],
               domain: ModelDomain | None = None) -> None:
    """Write ``model`` to ``state_dir`` (created if missing) atomically, replacing any previous model there.

    ``sources`` lists the files the model was fitted from (LR frame first), recorded for provenance; ``domain``
    where its LR frame came from (pixel size, pixel type, detector: :mod:`refscope.daemon.state.model_domain`).
    Raises :class:`StateError` when ``state_dir`` exists but is not a folder.
    """
    folder = Path(state_dir)
    if folder.exists() and not folder.is_dir():
        raise StateError(f"{folder}: exists and is not a folder; choose another state folder with -o")
    manifest = {
        "kind": MODEL_KIND,
        "format": MODEL_FORMAT,
        "scale": int(model.scale),
        "intensity": {"low": float(model.intensity.low), "high": float(model.intensity.high)},
        "noise_sigma": float(model.noise_sigma),
        "paired": dataclasses.asdict(model.paired),
        "geometries": [_geometry_to_json(g) for g in model.geometries],
        "forward": _forward_to_json(model.forward),
        "safe": model.safe.to_dict() if model.safe is not None else None,
        "library_size": len(model.library),
        "library_config": dataclasses.asdict(model.library.config),
        "sources": [str(s) for s in sources],
        "domain": domain.to_dict() if domain is not None else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    save_arrays(folder, MODEL_STATE_NAME, model.library.to_arrays(), manifest)


SERVED_BASELINE_FILE = "served_baseline.json"
SERVED_BASELINE_KIND = "served-baseline"


def save_served_baseline(state_dir: str | os.PathLike[str], baseline: SafeBaseline, *, scale: int,
                         source: str) -> None:
    """Record atomically in ``state_dir`` that ``baseline`` (chosen on reference ``source`` at x``scale``) serves
    while no model does (module docstring)."""
    folder = Path(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / SERVED_BASELINE_FILE, {
        "kind": SERVED_BASELINE_KIND, "scale": int(scale), "safe": baseline.to_dict(), "source": str(source),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def load_served_baseline(state_dir: str | os.PathLike[str], scale: int) -> SafeBaseline | None:
    """The safe baseline :func:`save_served_baseline` recorded in ``state_dir`` for x``scale`` (its σ is in that
    scale's output px); None when none was recorded or it was recorded for another scale.

    Raises :class:`StateError` naming the file when it exists but cannot be read or is not such a record.
    """
    path = Path(state_dir) / SERVED_BASELINE_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: cannot be read as the served safe baseline ({exc}); remove it to serve bicubic "
                         "until the next reference") from exc
    try:
        if record["kind"] != SERVED_BASELINE_KIND:
            raise ValueError(f"kind {record['kind']!r} is not {SERVED_BASELINE_KIND!r}")
        if int(record["scale"]) != int(scale):
            return None
        return SafeBaseline.from_dict(record["safe"])
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"{path}: not a served safe baseline record ({exc}); remove it to serve bicubic until the "
                         "next reference") from exc


def load_domain(state_dir: str | os.PathLike[str]) -> ModelDomain | None:
    """The domain recorded with the model in ``state_dir`` (None when none was recorded or it cannot be read)."""
    _, manifest_path = state_paths(Path(state_dir), MODEL_STATE_NAME)
    try:
        return ModelDomain.from_dict(json.loads(manifest_path.read_text())["manifest"].get("domain"))
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return None


def load_model(state_dir: str | os.PathLike[str]) -> FittedModel:
    """Read the model saved by :func:`save_model` from ``state_dir``, verifying its checksum.

    Raises :class:`StateError` (message starting with the folder or file) for a missing folder, a folder
    without a model, a corrupt or foreign state, or a manifest this version cannot read.
    """
    folder = Path(state_dir)
    if not folder.exists():
        raise StateError(f"{folder}: no such state folder; create one with `refscope fit LR.tif HR.tif -o {folder}`")
    if not folder.is_dir():
        raise StateError(f"{folder}: is not a state folder (it is a file); pass the folder given to `refscope fit -o`")
    _, manifest_path = state_paths(folder, MODEL_STATE_NAME)
    if not has_state(folder, MODEL_STATE_NAME):
        raise StateError(f"{folder}: holds no fitted model ({manifest_path.name} is missing); run `refscope fit` "
                         f"with -o {folder} first")
    arrays, manifest = load_arrays(folder, MODEL_STATE_NAME)
    if manifest.get("kind") != MODEL_KIND:
        raise StateError(f"{manifest_path}: holds a {manifest.get('kind')!r} state, not a {MODEL_KIND!r} model")
    if manifest.get("format") != MODEL_FORMAT:
        raise StateError(f"{manifest_path}: model format {manifest.get('format')!r} is not supported (this refscope "
                         f"reads format {MODEL_FORMAT}); run `refscope fit` again")
    try:
        library = PairedLibrary.from_arrays(arrays)
        intensity = IntensityScale(float(manifest["intensity"]["low"]), float(manifest["intensity"]["high"]))
        if not intensity.high > intensity.low:
            raise ValueError(f"intensity range low={intensity.low} >= high={intensity.high}")
        model = FittedModel(
            library=library,
            intensity=intensity,
            scale=int(manifest["scale"]),
            noise_sigma=float(manifest["noise_sigma"]),
            paired=PairedConfig(**manifest["paired"]),
            geometries=[_geometry_from_json(g) for g in manifest.get("geometries", [])],
            forward=_forward_from_json(manifest.get("forward"), int(manifest["scale"])),
            safe=SafeBaseline.from_dict(manifest["safe"]) if manifest.get("safe") is not None else None,
        )
    except (KeyError, TypeError, ValueError, RefscopeModelError) as exc:
        detail = f"missing entry {exc}" if isinstance(exc, KeyError) else str(exc)
        raise StateError(f"{manifest_path}: is not a valid model ({detail}); run `refscope fit` again") from exc
    return model

"""Save and load the session-trained network, its served ONNX export, the session's pairs and ``best.json``.

Files in a state folder (beside the paired library of :mod:`refscope.daemon.state.model_store`)::

    net.npz + net.json        weights (state dict, float32) and a checksummed manifest (state.store "net"):
                              {"kind": "refscope-net", "format": 1, "network": "compact", "network_kwargs": {},
                               "scale": 2, "normalisation": {"offset", "scale"}, "strategy": ..., "history": [...],
                               "onnx_file": "net-<sha12>.onnx", "onnx_sha256": ..., "onnx_manifest": {...}, ...}
    net-<sha12>.onnx          the same network exported to ONNX (models.onnx_export), content-addressed
    pairs.npz + pairs.json    the session's registered pairs, split into training areas and held-out subimages
    best.json                 which method won on the held-out subimages, with the scores

Writes are atomic: the ONNX file is written under a new content-addressed name first, then the weights and
``net.json`` (the commit point) that names it, and only then are older ``net-*.onnx`` files removed, so a
reader (:func:`load_served`) always sees a complete ONNX file matching its manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import numpy as np

from refscope.models.manifest import ManifestError, ModelManifest

from ..atomic import atomic_write_bytes, atomic_write_json
from ..errors import StateError
from .store import has_state, load_arrays, save_arrays, state_paths

if TYPE_CHECKING:  # PyTorch is imported only by the functions that need it
    from refscope.models.net_fit import NetFit

__all__ = ["NET_STATE_NAME", "PAIRS_STATE_NAME", "BEST_FILE", "SessionPairs", "save_net", "load_net", "has_net",
           "load_served", "finite_json", "save_pairs", "load_pairs", "save_best", "load_best"]

NET_STATE_NAME = "net"
PAIRS_STATE_NAME = "pairs"
BEST_FILE = "best.json"
NET_KIND = "refscope-net"
NET_FORMAT = 1


def _folder(state_dir: str | os.PathLike[str], *, create: bool = False) -> Path:
    folder = Path(state_dir)
    if folder.exists() and not folder.is_dir():
        raise StateError(f"{folder}: exists and is not a folder; choose another state folder")
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def has_net(state_dir: str | os.PathLike[str]) -> bool:
    """True when ``state_dir`` holds a saved network manifest."""
    return Path(state_dir).is_dir() and has_state(state_dir, NET_STATE_NAME)


def save_net(state_dir: str | os.PathLike[str], fit: "NetFit", *, sources: list[str] = (),
             validation: dict[str, float] | None = None, version: str = "1") -> Path:
    """Export ``fit`` to ONNX and save weights + ONNX + manifest in ``state_dir`` atomically; returns the ONNX path.

    ``validation`` (finite metrics, e.g. ``{"held_out_d_psnr_db": 0.4}``) goes into the ONNX manifest.
    """
    from refscope.models.net_fit import export_netfit

    folder = _folder(state_dir, create=True)
    valid = {k: float(v) for k, v in (validation or {}).items() if np.isfinite(v)}
    model_bytes, manifest = export_netfit(fit, version=version, validation=valid)
    digest = hashlib.sha256(model_bytes).hexdigest()
    onnx_path = folder / f"net-{digest[:12]}.onnx"
    atomic_write_bytes(onnx_path, model_bytes)
    arrays = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in fit.state_dict.items()}
    document = {
        "kind": NET_KIND, "format": NET_FORMAT, "network": fit.network, "network_kwargs": dict(fit.network_kwargs),
        "scale": int(fit.scale), "strategy": fit.strategy,
        "normalisation": {"offset": fit.normalisation.offset, "scale": fit.normalisation.scale},
        "history": fit.history, "sources": [str(s) for s in sources], "validation": valid,
        "onnx_file": onnx_path.name, "onnx_sha256": digest, "onnx_manifest": manifest.to_dict(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    save_arrays(folder, NET_STATE_NAME, arrays, finite_json(json.loads(json.dumps(document, default=_jsonable))))
    for old in folder.glob("net-*.onnx"):
        if old.name != onnx_path.name:
            try:
                old.unlink()
            except OSError:  # pragma: no cover - best effort clean-up
                pass
    return onnx_path


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def finite_json(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None (strict JSON has neither), numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    return value


def _net_manifest(folder: Path) -> dict[str, Any]:
    _, manifest_path = state_paths(folder, NET_STATE_NAME)
    if not folder.is_dir():
        raise StateError(f"{folder}: no such state folder; create one with `refscope fit LR.tif HR.tif -o {folder} "
                         f"--method net`")
    if not manifest_path.is_file():
        raise StateError(f"{folder}: holds no trained network ({manifest_path.name} is missing); run `refscope fit "
                         f"... -o {folder} --method net` or `refscope train {folder} ...` first")
    try:
        document = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest = document["manifest"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(f"{manifest_path}: is not a valid network manifest ({exc}); train the network again") from exc
    if manifest.get("kind") != NET_KIND or manifest.get("format") != NET_FORMAT:
        raise StateError(f"{manifest_path}: holds a {manifest.get('kind')!r} state (format {manifest.get('format')!r}),"
                         f" not a {NET_KIND!r} format {NET_FORMAT} network")
    return manifest


def load_served(state_dir: str | os.PathLike[str]) -> tuple[bytes, ModelManifest]:
    """The served network: ONNX bytes (checksum verified) and their :class:`ModelManifest`."""
    folder = Path(state_dir)
    manifest = _net_manifest(folder)
    path = folder / str(manifest.get("onnx_file", ""))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StateError(f"{path}: cannot read the network's ONNX file ({exc.strerror or exc}); "
                         f"train it again") from exc
    if hashlib.sha256(data).hexdigest() != manifest.get("onnx_sha256"):
        raise StateError(f"{path}: checksum mismatch, the file is corrupt; train the network again")
    try:
        return data, ModelManifest.from_dict(manifest["onnx_manifest"])
    except (KeyError, ManifestError) as exc:
        raise StateError(f"{folder / 'net.json'}: bad ONNX manifest ({exc})") from exc


def load_net(state_dir: str | os.PathLike[str]) -> "NetFit":
    """The trained network as a :class:`NetFit` (weights checksum verified), e.g. to warm-start training."""
    import torch

    from refscope.models.net_fit import NetFit
    from refscope.models.training import Normalisation

    folder = Path(state_dir)
    _net_manifest(folder)
    arrays, manifest = load_arrays(folder, NET_STATE_NAME)
    try:
        norm = Normalisation(float(manifest["normalisation"]["offset"]), float(manifest["normalisation"]["scale"]))
        state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in arrays.items()}
        fit = NetFit(str(manifest["network"]), int(manifest["scale"]), state, norm,
                     dict(manifest.get("network_kwargs") or {}), str(manifest.get("strategy", "real-pairs")),
                     list(manifest.get("history") or []))
        fit.build()  # the weights must fit the network
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise StateError(f"{folder / 'net.json'}: is not a valid network ({exc}); train it again") from exc
    return fit


# ----------------------------------------------------------------------------------------------- pairs
class SessionPairs:
    """The session's registered pairs: ``train`` (LR region, HR grid) areas, ``held_out`` (LR, HR) subimages
    (``owner[i]`` = index of the pair each held-out subimage comes from) and the ``sources`` of each pair."""

    def __init__(self, scale: int, train: list | None = None, held_out: list | None = None,
                 owner: list[int] | None = None, sources: list[list[str]] | None = None) -> None:
        self.scale = int(scale)
        self.train = list(train or [])
        self.held_out = list(held_out or [])
        self.owner = list(owner or [])
        self.sources = list(sources or [])

    def add(self, train: tuple[np.ndarray, np.ndarray], held_out, sources: list[str]) -> None:
        index = len(self.train)
        self.train.append(train)
        self.held_out.extend(held_out)
        self.owner.extend([index] * len(held_out))
        self.sources.append([str(s) for s in sources])


def save_pairs(state_dir: str | os.PathLike[str], pairs: SessionPairs) -> None:
    arrays: dict[str, np.ndarray] = {}
    for i, (lr, hr) in enumerate(pairs.train):
        arrays[f"train_lr_{i}"], arrays[f"train_hr_{i}"] = np.asarray(lr, np.float32), np.asarray(hr, np.float32)
    for j, (lr, hr) in enumerate(pairs.held_out):
        arrays[f"held_lr_{j}"], arrays[f"held_hr_{j}"] = np.asarray(lr, np.float32), np.asarray(hr, np.float32)
    save_arrays(_folder(state_dir, create=True), PAIRS_STATE_NAME, arrays,
                {"kind": "refscope-pairs", "format": 1, "scale": pairs.scale, "n_train": len(pairs.train),
                 "n_held_out": len(pairs.held_out), "owner": pairs.owner, "sources": pairs.sources})


def load_pairs(state_dir: str | os.PathLike[str]) -> SessionPairs | None:
    """The stored pairs, or None when the folder holds none."""
    if not Path(state_dir).is_dir() or not has_state(state_dir, PAIRS_STATE_NAME):
        return None
    arrays, manifest = load_arrays(state_dir, PAIRS_STATE_NAME)
    try:
        train = [(arrays[f"train_lr_{i}"].astype(np.float64), arrays[f"train_hr_{i}"].astype(np.float64))
                 for i in range(int(manifest["n_train"]))]
        held = [(arrays[f"held_lr_{j}"].astype(np.float64), arrays[f"held_hr_{j}"].astype(np.float64))
                for j in range(int(manifest["n_held_out"]))]
        return SessionPairs(int(manifest["scale"]), train, held, list(manifest["owner"]), list(manifest["sources"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"{Path(state_dir) / 'pairs.json'}: is not a valid pair store ({exc})") from exc


# ----------------------------------------------------------------------------------------------- best.json
def save_best(state_dir: str | os.PathLike[str], document: dict[str, Any]) -> None:
    """Write ``best.json`` atomically ({"best": "net"|"paired"|"bicubic", "scores": {...}, ...})."""
    if document.get("best") not in ("net", "paired", "bicubic"):
        raise ValueError(f"best must be 'net', 'paired' or 'bicubic', got {document.get('best')!r}")
    atomic_write_json(_folder(state_dir, create=True) / BEST_FILE, finite_json(document))


def load_best(state_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The parsed ``best.json``, or None when absent."""
    path = Path(state_dir) / BEST_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: is not valid JSON ({exc}); run `refscope fit --method net` again") from exc
    if not isinstance(document, dict) or document.get("best") not in ("net", "paired", "bicubic"):
        raise StateError(f"{path}: has no valid 'best' entry (net, paired or bicubic)")
    return document

"""The physically acquired SEM pairs of ../shared/data/sem_pairs, as the quality benchmark and the prior use them.

Each pair is read from its raw FEI TIFFs (pixel sizes from their metadata) and registered by refscope's own
global registration (never the hand-made ``pairs.json`` geometry). :func:`load_pair` returns the whole LR frame, the
overlap box and the HR resampled onto the S-times grid of that box for every S in 2..4 that the pair's factor
allows (an x10 pair gives S = 2, 3 and 4 grids). Results are cached in ``$REFSCOPE_BENCH_CACHE`` (default
``/tmp/refscope-bench-cache``) keyed by the files' sizes and mtimes, so that several benchmark processes share the
registration work.

:func:`related` says which pairs share a raw frame: a model scored on a pair must not have seen any of them.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refscope.daemon.images import read_image
from refscope.models.evaluation import split_subimages
from refscope.models.pipeline import FitConfig, register_reference, training_grids
from refscope.models.registration import PairGeometry

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("REFSCOPE_SHARED_DATA", HERE.parent.parent / "shared" / "data")) / "sem_pairs"
CACHE = Path(os.environ.get("REFSCOPE_BENCH_CACHE", "/tmp/refscope-bench-cache"))
#: The six pairs the quality benchmark scores (the x10 pairs are scored at S = 4 only when asked).
SCORED = ("pair00", "pair07", "pair08", "pair09", "pair11", "pair16")


@dataclass(frozen=True)
class LoadedPair:
    """name; files (LR, HR names); factor (LR px / HR px); scale (the S it is scored at, floor(factor) <= 4);
    lr (H, W) float64 whole LR frame; boxes[S] ((y0, y1), (x0, x1)) LR px; grids[S] (S·h, S·w) HR on that grid."""

    name: str
    files: tuple[str, str]
    factor: float
    scale: int
    lr: np.ndarray
    boxes: dict[int, tuple[tuple[int, int], tuple[int, int]]]
    grids: dict[int, np.ndarray]

    def region(self, scale: int | None = None, *, columns: tuple[int, int] = (0, 4)) -> tuple[np.ndarray, np.ndarray]:
        """(LR region, HR grid) of subimage columns ``[c0, c1)`` of the 3x4 split of the overlap at ``scale``."""
        s = self.scale if scale is None else scale
        (y0, y1), (x0, _) = self.boxes[s]
        _, xs = split_subimages(self.boxes[s])
        a, b = int(xs[columns[0]]), int(xs[columns[1]])
        return self.lr[y0:y1, a:b], self.grids[s][:, (a - x0) * s:(b - x0) * s]


def pair_table() -> list[dict]:
    return json.loads((DATA / "pairs.json").read_text())


def _key(entry: dict) -> str:
    stats = [(DATA / "raw" / entry[k]).stat() for k in ("lr_file", "hr_file")]
    return entry["pair"] + "-" + "-".join(f"{s.st_size}-{int(s.st_mtime)}" for s in stats)


def load_pair(name: str) -> LoadedPair:
    entry = next(e for e in pair_table() if e["pair"] == name)
    files = (entry["lr_file"], entry["hr_file"])
    cache = CACHE / f"{_key(entry)}.npz"
    if cache.is_file():
        z = np.load(cache)
        scales = [int(s) for s in z["scales"]]
        boxes = {s: tuple(map(tuple, z[f"box{s}"].tolist())) for s in scales}
        return LoadedPair(name, files, float(z["factor"]), int(z["scale"]), z["lr"],
                          boxes, {s: z[f"grid{s}"] for s in scales})
    lr_px, hr_px, factor, geometry = _registered(entry)
    scale = _scored_scale(factor)
    boxes, grids = _grids(lr_px, hr_px, factor, geometry)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, lr=lr_px, factor=factor, scale=scale, scales=np.array(sorted(boxes)),
             **{f"box{s}": np.array(b) for s, b in boxes.items()}, **{f"grid{s}": g for s, g in grids.items()})
    os.replace(tmp, cache)
    return LoadedPair(name, files, factor, scale, lr_px, boxes, grids)


def _scored_scale(factor: float) -> int:
    """The S a pair of ``factor`` (LR px / HR px) is scored at: floor(factor), at most 4."""
    return min(int(math.floor(factor + 1e-6)), 4)


def _registered(entry: dict) -> tuple[np.ndarray, np.ndarray, float, PairGeometry]:
    """(LR frame, HR scan, factor, geometry) of a pairs.json entry, registered by refscope itself."""
    lr = read_image(DATA / "raw" / entry["lr_file"])
    hr = read_image(DATA / "raw" / entry["hr_file"])
    factor = lr.pixel_size_nm / hr.pixel_size_nm
    lr_px, hr_px = lr.data.astype(np.float64), hr.data.astype(np.float64)
    geometry = register_reference(lr_px, hr_px, factor=factor,
                                  config=FitConfig(scale=_scored_scale(factor)))
    return lr_px, hr_px, factor, geometry


def _grids(lr: np.ndarray, hr: np.ndarray, factor: float, geometry: PairGeometry) -> tuple[dict, dict]:
    """Overlap boxes and S-times HR grids for every S in 2..4 that ``factor`` allows."""
    boxes, grids = {}, {}
    for s in range(2, 5):
        if s <= factor + 1e-6:
            boxes[s], grids[s] = training_grids(lr, hr, geometry, scale=s)
    return boxes, grids


def load_subsampled_pairs(name: str, step: int) -> list[LoadedPair]:
    """The pair with its LR frame replaced by each of its ``step``² sub-grids ``lr[py::step, px::step]``: physical
    scans of the same field ``step`` times coarser (an SEM point-samples; each pixel keeps its own dwell and noise),
    against the same HR scan, whose noise stays independent of them. Their factor is ``step`` times the pair's, so an
    x2.4 pair gives x4.8 ones a x4 prior can learn from. Geometry: :meth:`PairGeometry.subsampled` of the pair's
    registration (registered once)."""
    entry = next(e for e in pair_table() if e["pair"] == name)
    lr_px, hr_px, factor, geometry = _registered(entry)
    sub_factor = step * factor
    out = []
    for phase in ((py, px) for py in range(step) for px in range(step)):
        lr_sub = np.ascontiguousarray(lr_px[phase[0]::step, phase[1]::step])
        boxes, grids = _grids(lr_sub, hr_px, sub_factor, geometry.subsampled(step, phase))
        out.append(LoadedPair(f"{name}/{step}@{phase[0]}{phase[1]}", (entry["lr_file"], entry["hr_file"]), sub_factor,
                              _scored_scale(sub_factor), lr_sub, boxes, grids))
    return out


def subsampled_prior_pairs(scale: int, exclude: list[str] | tuple[str, ...] = (), step: int = 2) -> list[str]:
    """Pairs too coarse for a x``scale`` prior whose LR sub-grid of ``step`` allows it (``factor < scale <=
    step·factor``), none sharing a frame with ``exclude``: what :func:`load_subsampled_pairs` adds to the prior."""
    banned = related(exclude) if exclude else set()
    return [e["pair"] for e in pair_table()
            if e["pair"] not in banned and e["lr_px_nm"] / e["hr_px_nm"] + 1e-6 < scale
            <= step * e["lr_px_nm"] / e["hr_px_nm"] + 1e-6]


def related(names: list[str] | tuple[str, ...]) -> set[str]:
    """Every pair sharing a raw frame with any of ``names`` (``names`` included)."""
    table = pair_table()
    frames = {f for e in table if e["pair"] in names for f in (e["lr_file"], e["hr_file"])}
    return {e["pair"] for e in table if {e["lr_file"], e["hr_file"]} & frames}


def prior_pairs(scale: int, exclude: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Pairs usable to train a x``scale`` prior that must not have seen ``exclude`` (or anything sharing a frame)."""
    banned = related(exclude) if exclude else set()
    out = []
    for e in pair_table():
        factor = e["lr_px_nm"] / e["hr_px_nm"]
        if e["pair"] not in banned and scale <= factor + 1e-6:
            out.append(e["pair"])
    return out

"""Global registration and HR resampling on the physically acquired SEM pairs of ``../shared/data/sem_pairs``.

The oracle is ``pairs.json`` (hand-checked registration: ``u_hr = (u_lr - offset_yx_lr_px) * fitted_factor_yx``)
and the ``aligned/pairNN_hr_on_lr_grid_xS.tif`` ground-truth images. Skipped when the data folder is absent.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from refscope.models.registration import PairGeometry, overlap_box, register_global, resample_hr_to_lr_grid

pytestmark = pytest.mark.realdata
tifffile = pytest.importorskip("tifffile")

DATA_ROWS = 1024   # FEI TIFFs are 1536x1103: rows >= 1024 are the data bar

# x2.4: pair07, pair11; x4.17: pair00, pair16; x3.2 / x3.43: pair08, pair09; x10: pair01, pair02, pair15
PAIRS = ["pair07", "pair11", "pair00", "pair16", "pair08", "pair09", "pair01", "pair02", "pair15"]


@lru_cache(maxsize=None)
def _pairs(root: str) -> dict[str, dict]:
    return {p["pair"]: p for p in json.loads((Path(root) / "sem_pairs" / "pairs.json").read_text())}


@lru_cache(maxsize=16)
def _raw(root: str, name: str) -> np.ndarray:
    image = tifffile.imread(Path(root) / "sem_pairs" / "raw" / name)
    assert image.shape == (1103, 1536)
    return image[:DATA_ROWS]


def _load(shared_data: Path, pair: str) -> tuple[dict, np.ndarray, np.ndarray]:
    meta = _pairs(str(shared_data))[pair]
    return meta, _raw(str(shared_data), meta["lr_file"]), _raw(str(shared_data), meta["hr_file"])


@pytest.mark.parametrize("pair", PAIRS)
def test_register_global_matches_pairs_json(shared_data, pair):
    meta, lr, hr = _load(shared_data, pair)
    geom = register_global(lr, hr, factor=meta["lr_px_nm"] / meta["hr_px_nm"])
    offset_err = np.abs(np.subtract(geom.offset_yx, meta["offset_yx_lr_px"]))
    scale_err = np.abs(np.divide(geom.factor_yx, meta["fitted_factor_yx"]) - 1)
    assert offset_err.max() < 1.0, f"{pair}: offset error {offset_err} LR px"
    assert scale_err.max() < 0.005, f"{pair}: scale error {scale_err * 100} %"
    assert abs(geom.rotation_deg) < 0.3                        # the real pairs have no rotation
    assert geom.score > 0.9
    (y0, y1), (x0, x1) = overlap_box(geom, lr.shape, hr.shape)
    (ry0, ry1), (rx0, rx1) = meta["lr_box_yx"]
    assert max(abs(y0 - ry0), abs(y1 - ry1), abs(x0 - rx0), abs(x1 - rx1)) <= 1


@pytest.mark.parametrize("pair", ["pair07", "pair00", "pair08", "pair09", "pair01"])
def test_resample_hr_to_lr_grid_matches_aligned_ground_truth(shared_data, pair):
    meta, lr, hr = _load(shared_data, pair)
    geom = PairGeometry(meta["offset_yx_lr_px"], meta["fitted_factor_yx"])
    box = overlap_box(geom, lr.shape, hr.shape)
    assert box == tuple(tuple(b) for b in meta["lr_box_yx"])
    scale = meta["aligned_scale"]
    ref = tifffile.imread(shared_data / "sem_pairs" / "aligned" / f"{pair}_hr_on_lr_grid_x{scale}.tif")
    out = resample_hr_to_lr_grid(hr, geom, box, scale)
    assert out.shape == ref.shape
    assert np.corrcoef(out.ravel(), ref.astype(np.float64).ravel())[0, 1] > 0.95

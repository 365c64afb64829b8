"""Quality drift on real SEM frames (../shared/data; skipped without it).

The library is learned from the NiO pair07 (5000x LR at 27 nm/px, its 12000x HR reference resampled onto the x2
grid). Frames of the same sample -- the whole LR frame the pair came from and another NiO frame at the same
magnification -- keep every signal below its raise threshold; frames of other samples -- lung-cell (CS) frames at
3500x and 8000x, and a FIB-SEM slice of brain tissue (EPFL) -- raise drift, by a wide margin.

What raises it on these data is mostly ``intensity`` (the other samples were recorded with other detector
settings and bit depths) and ``texture``; ``coverage`` alone does not separate real noisy frames of different
biological samples once their brightness is matched (their 9x9 patches look alike at the noise level).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from refscope.daemon.config import MonitorConfig
from refscope.daemon.images import read_image
from refscope.models.confidence import confidence_map, key_index, reference_q, support_grid
from refscope.models.library import LibraryConfig
from refscope.models.pipeline import FitConfig, fit_library
from refscope.models.quality_monitor import SIGNALS, drift_signals, frame_stats

pytestmark = pytest.mark.realdata

NIO_SAME = ("96336e__NiO_DC_5000x_E.tif", "c2da01__NiO_DC_5000x_D.tif")
CS_OTHER = ("b76fd8__CS_DCs_3500x_A.tif", "a9aac1__CS_DCs_8000x_A.tif")
THRESHOLDS = MonitorConfig()


@pytest.fixture(scope="module")
def nio(shared_data: Path):
    """(model, key index, training FrameStats, q_ref) learned from a 256x384 part of pair07."""
    aligned = shared_data / "sem_pairs" / "aligned"
    lr = read_image(aligned / "pair07_lr.tif").data.astype(np.float64)[:256, :384]
    hr = read_image(aligned / "pair07_hr_on_lr_grid_x2.tif").data.astype(np.float64)[:512, :768]
    model = fit_library([(lr, hr)], config=FitConfig(scale=2, library=LibraryConfig(size=1500)))
    keys = key_index(model)
    grid = support_grid(lr, model, keys=keys)
    return model, keys, frame_stats(lr, support=grid), reference_q([grid])


def _signals(image: np.ndarray, nio) -> dict[str, float | None]:
    model, keys, training, _ = nio
    frame = np.asarray(image, dtype=np.float64)
    return drift_signals(frame_stats(frame, support=support_grid(frame, model, keys=keys)), [training])


def _raised(signals: dict[str, float | None]) -> list[str]:
    return [name for name in SIGNALS if signals[name] is not None and signals[name] >= getattr(THRESHOLDS, f"{name}_on")]


def test_frames_of_the_same_sample_stay_below_the_thresholds(shared_data, nio):
    for name in NIO_SAME:
        signals = _signals(read_image(shared_data / "sem_pairs" / "raw" / name).data, nio)
        assert _raised(signals) == [], (name, signals)


def test_frames_of_other_samples_raise_drift(shared_data, nio):
    others = {name: read_image(shared_data / "sem_pairs" / "raw" / name).data for name in CS_OTHER}
    others["epfl"] = read_image(shared_data / "hr_only" / "epfl_fibsem" / "training0000.png").data
    same = [_signals(read_image(shared_data / "sem_pairs" / "raw" / n).data, nio) for n in NIO_SAME]
    for name, image in others.items():
        signals = _signals(image, nio)
        assert _raised(signals), (name, signals)
        # the rise is large: well above anything a frame of the training sample shows
        assert max(signals["intensity"], signals["texture"]) > 2 * max(max(s["intensity"], s["texture"]) for s in same)


def test_confidence_map_of_a_real_frame(shared_data, nio):
    model, keys, _, q_ref = nio
    frame = read_image(shared_data / "sem_pairs" / "raw" / NIO_SAME[1]).data[:256, :384].astype(np.float64)
    conf = confidence_map(support_grid(frame, model, keys=keys), q_ref)
    assert conf.shape == (512, 768) and conf.dtype == np.float32
    assert 0.0 <= float(conf.min()) and float(conf.max()) <= 1.0 and 0.3 < float(conf.mean()) < 0.95

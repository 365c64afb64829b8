"""The memory budget: tile sizes derived from it, frames refused by it, and real resident memory inside it."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from refscope.daemon.config import ModelConfig, ServeConfig
from refscope.daemon.config.fields import ConfigError
from refscope.daemon.config.budget import MemoryBudget
from refscope.daemon.serve.engine import ServingEngine
from refscope.models.library import LibraryConfig
from refscope.models.pipeline import FitConfig, fit
from refscope.models.synthetic import make_pair
from refscope.models.tiling import memory_bound_bytes, tile_for_budget

PROBE = Path(__file__).with_name("memory_probe.py")
MB = 1 << 20


def _probe(scale: int, height: int, width: int) -> dict:
    done = subprocess.run([sys.executable, str(PROBE), str(scale), str(height), str(width)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# x2 of the same frame holds a quarter of the x4 output: the slow-marked case (benchmarks and `pytest -m slow`)
@pytest.mark.parametrize("scale,height,width", [pytest.param(2, 2048, 3072, marks=pytest.mark.slow), (4, 2048, 3072),
                                                (8, 1024, 1536)])
def test_enhancing_a_large_frame_stays_inside_the_budget(scale, height, width):
    """Resident memory measured in the enhancing process (VmHWM): the whole process stays under the budget,
    and what one frame adds is its float32 output plus at most the budget's workspace share."""
    probe = _probe(scale, height, width)
    out_bytes = 4 * scale * scale * height * width
    assert probe["out_shape"] == [scale * height, scale * width]
    assert probe["backend"] == "onnx"
    assert probe["peak"] <= probe["total"], f"peak RSS {probe['peak'] / MB:.0f} MB over the budget"
    assert probe["peak"] - probe["before"] <= out_bytes + probe["workspace"], (
        f"enhancing added {(probe['peak'] - probe['before']) / MB:.0f} MB: output {out_bytes / MB:.0f} MB + "
        f"workspace share {probe['workspace'] / MB:.0f} MB exceeded")
    assert probe["peak_bicubic"] - probe["before_bicubic"] <= out_bytes + probe["workspace"]


def test_tile_for_budget_fits_its_share_and_grows_with_it():
    for scale in (2, 4, 8):
        small = tile_for_budget(64 * MB, workspace_bytes_per_px=3000.0, scale=scale, halo=5)
        large = tile_for_budget(512 * MB, workspace_bytes_per_px=3000.0, scale=scale, halo=5)
        assert 32 <= small < large
        assert small % 16 == 0
        window = small + 10
        assert window * window * (3000.0 + 4 + 4 * scale * scale) <= 64 * MB
        # the process_tiled bound (window + its output) is inside the share too
        assert memory_bound_bytes(small, 5, scale) <= 64 * MB
    assert tile_for_budget(10 ** 12, workspace_bytes_per_px=1.0, scale=2, halo=5, max_tile=256) == 256
    with pytest.raises(ValueError, match="workspace_bytes_per_px"):
        tile_for_budget(MB, workspace_bytes_per_px=0.0, scale=2, halo=5)


def test_budget_shares_and_frame_refusal():
    budget = MemoryBudget(1500, trainer=True, learner=True)
    assert budget.serving_bytes == (1500 - 320 - 480 - 350) * MB
    assert budget.workspace_bytes + budget.frames_bytes == budget.serving_bytes
    ok = budget.plan_frame((1024, 1536), 4)
    assert ok.fits and ok.output_queue >= 1 and ok.reason is None
    too_big = budget.plan_frame((4096, 4096), 4)
    assert not too_big.fits
    assert "serve.max_memory_mb = 1500" in too_big.reason and "4096x4096 px at x4" in too_big.reason
    # the same frame fits a bigger budget, and the message said how big
    need = int(too_big.reason.split("at least ")[1].split()[0])
    assert MemoryBudget(need).plan_frame((4096, 4096), 4).fits
    with pytest.raises(ValueError, match="serve.max_memory_mb"):
        MemoryBudget(900, trainer=True)
    assert MemoryBudget.offline(900).serving_bytes > 0


def test_config_refuses_a_budget_without_room_for_serving(tmp_path):
    from refscope.daemon.config import DaemonConfig, IngestConfig, TrainerConfig

    with pytest.raises(ConfigError, match="serve.max_memory_mb"):
        DaemonConfig(state_dir=tmp_path / "state", ingest=IngestConfig(watch=tmp_path / "in"),
                     serve=ServeConfig(max_memory_mb=900))
    config = DaemonConfig(state_dir=tmp_path / "state", ingest=IngestConfig(watch=tmp_path / "in"),
                          serve=ServeConfig(max_memory_mb=900), trainer=TrainerConfig(enabled=False))
    assert config.memory_budget.total_mb == 900 and not config.memory_budget.trainer
    with pytest.raises(ConfigError, match="serve.max_memory_mb"):
        ServeConfig(max_memory_mb=100)


def _model(scale: int):
    pair = make_pair(rng=np.random.default_rng(3), lr_shape=(64, 72), factor=float(scale))
    return fit(pair.lr, [(pair.hr, float(scale))],
               config=FitConfig(scale=scale, library=LibraryConfig(patch_size=9, size=600, oversample=3)))


def test_tiled_serving_equals_the_untiled_reference_whatever_the_budget():
    """A tiny budget gives many small tiles; the paired model's output is still the untiled NumPy oracle's, and
    bicubic the untiled bicubic (exact halos)."""
    from refscope.models.image_ops import upsample_bicubic
    from refscope.models.pipeline import enhance

    model = _model(4)
    frame = np.random.default_rng(5).normal(500.0, 80.0, (150, 170))
    engine = ServingEngine(ModelConfig(scale=4), ServeConfig(tile=64, halo=8), budget=MemoryBudget.offline(600))
    engine.set_model(model, 1)
    tile, halo, align = engine.tiling(frame.shape)
    assert tile < 150 and (halo, align) == model.tiling("paired") and halo >= 1
    served = engine.enhance(frame)
    assert served.backend == "onnx"
    oracle = enhance(frame, model, method="paired")
    assert np.max(np.abs(served.image - oracle)) <= 1e-3 * float(np.ptp(oracle))
    engine.set_method("bicubic")
    np.testing.assert_allclose(engine.enhance(frame).image, upsample_bicubic(frame, 4), rtol=1e-5, atol=1e-3)


def test_a_promotion_warming_up_keeps_serving_the_previous_model(monkeypatch):
    """While model v2 is exported and warmed up the engine says so, and frames are served by v1 meanwhile."""
    import refscope.models.paired_net as paired_net

    engine = ServingEngine(ModelConfig(scale=2), ServeConfig())
    frame = np.random.default_rng(2).normal(300.0, 40.0, (48, 56))
    engine.enhance(frame)
    engine.set_model(_model(2), 1)
    assert not engine.warming and engine.enhance(frame).version == 1
    release, entered = threading.Event(), threading.Event()
    original = paired_net.export_paired_model

    def slow_export(*args, **kwargs):
        entered.set()
        assert release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(paired_net, "export_paired_model", slow_export)
    promoting = threading.Thread(target=engine.set_model, args=(_model(2), 2))
    promoting.start()
    try:
        assert entered.wait(30)
        assert engine.warming and engine.describe()["warming"] is True
        served = engine.enhance(frame)
        assert (served.version, served.backend) == (1, "onnx")
    finally:
        release.set()
        promoting.join(60)
    assert not engine.warming
    assert engine.enhance(frame).version == 2


def test_the_safe_blend_is_counted_in_the_frame_in_flight() -> None:
    """The blend's temporaries are held inside the enhancement, the confidence map after it: the frame in flight
    holds the larger of the two, not both."""
    from refscope.models.safe_blend import blend_bytes

    budget = MemoryBudget(1500)
    blend = blend_bytes((1024, 1536), 4)
    out, lr = 4 * 16 * 1024 * 1536, 8 * 1024 * 1536
    assert blend > 24 * 1024 * 1536
    assert budget.plan_frame((1024, 1536), 4, confidence=False, safe_blend=True).in_flight_bytes == out + lr + blend
    assert budget.plan_frame((1024, 1536), 4, confidence=False).in_flight_bytes == out + lr
    assert budget.plan_frame((1024, 1536), 4, safe_blend=True).in_flight_bytes == out + lr + max(out, blend)


def test_a_real_frame_at_x4_fits_the_default_daemon_budget() -> None:
    """A 1536x1024 FEI frame at x4 is an ordinary input: under the default configuration (1500 MB, trainer on,
    monitor, safe blend) the daemon's own plan serves it (it refused it as too_large while the blend's
    temporaries and the confidence map were counted as held together)."""
    import time

    from refscope.daemon.config import load_config
    from refscope.daemon.frames import Frame
    from refscope.daemon.service.frame_path import plan_frame

    config = load_config(None, {"ingest.zmq_endpoint": "tcp://127.0.0.1:*", "model.scale": "4"})
    engine = ServingEngine(config.model, config.serve, budget=config.memory_budget)
    frame = Frame(np.zeros((1024, 1536), np.uint16), 27.0, "lr", "mem:fei", 0, time.time())
    plan = plan_frame(frame, engine, config, monitored=True)
    assert plan.fits, plan.reason

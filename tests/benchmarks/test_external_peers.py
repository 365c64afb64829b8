"""The benchmark's out-of-package peers without their environments: the batch file protocol on a fake worker, the
tk-r-em setting chosen on validation with a fake runner, and tk-r-em counted as a peer in the rendered tables.

TensorFlow and ``tk_r_em`` (GPL-3) are never needed here: they live only in ``benchmarks/peers/tkrem/.venv``, made
by the benchmark itself.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import external_peers as ep  # noqa: E402 - benchmarks/ is not a package
import quality  # noqa: E402

FAKE_WORKER = """
import sys, numpy as np
from pathlib import Path
src, dst, variants = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
for path in sorted(src.glob("*.npy")):
    x = np.load(path)
    for v in variants:
        if v != "skip":
            np.save(dst / f"{path.stem}__{v}.npy", x * float(v.split("x")[1]))
"""


@pytest.fixture()
def fake_worker(tmp_path: Path) -> list[str]:
    script = tmp_path / "worker.py"
    script.write_text(FAKE_WORKER)
    return [sys.executable, str(script)]


def test_run_batch_sends_every_image_through_every_variant_in_order(fake_worker, rng) -> None:
    images = [rng.random((5 + k, 7)) for k in range(12)]  # 12 inputs: keys must sort in the order given
    out = ep.run_batch(fake_worker, images, ["x2", "x3"])
    assert len(out) == len(images)
    for image, result in zip(images, out):
        np.testing.assert_array_equal(result["x2"], 2 * image)
        np.testing.assert_array_equal(result["x3"], 3 * image)


def test_run_batch_names_missing_outputs_and_passes_failures_on(fake_worker, rng, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="skip"):
        ep.run_batch(fake_worker, [rng.random((4, 4))], ["x2", "skip"])
    failing = tmp_path / "fail.py"
    failing.write_text("raise SystemExit(3)\n")
    with pytest.raises(subprocess.CalledProcessError):
        ep.run_batch([sys.executable, str(failing)], [rng.random((4, 4))], ["x2"])


def test_save_atomic_leaves_only_the_complete_file(tmp_path: Path) -> None:
    ep.save_atomic(tmp_path / "a.npy", np.arange(6.0).reshape(2, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(6.0).reshape(2, 3))


def test_an_environment_that_cannot_be_made_leaves_the_peer_out_and_says_so(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = ep.PeerEnv("fake-peer", blocker / ".venv", (("nothing",),), "nothing")
    assert ep.ensure_env(env) is False
    assert "fake-peer is left out" in capsys.readouterr().err


def test_locate_finds_slices_of_the_frame_and_nothing_else(rng) -> None:
    frame = rng.random((40, 50))
    assert ep.locate(frame, frame[7:19, 11:30]) == (7, 11)
    assert ep.locate(frame, frame[7:19, 11:30][2:, 3:]) == (9, 14)
    assert ep.locate(frame, frame[7:19, 11:30].copy()) is None
    assert ep.locate(frame, frame[::2, ::2]) is None


def _pair(rng, scale: int, shape=(24, 24)):
    clean = ndimage.gaussian_filter(rng.random((shape[0] * scale, shape[1] * scale)), 3.0)
    lr = clean[scale // 2::scale, scale // 2::scale] + 0.02 * rng.standard_normal(shape)
    return lr, clean


def test_tkrem_setting_is_chosen_on_validation_and_applied_to_the_scored_subimages(rng) -> None:
    scale = 2
    frame = np.zeros((80, 80))
    validation, scored = [], []
    for k, y in enumerate((0, 26, 52)):
        for part, x in ((validation, 4), (scored, 40)):
            lr, hr = _pair(rng, scale)
            frame[y:y + 24, x:x + 24] = lr
            part.append((frame[y:y + 24, x:x + 24], hr))
    calls = []

    def runner(images):  # "good" denoises, "bad" adds noise; one call for the whole batch
        calls.append(len(images))
        return [{"good": ndimage.gaussian_filter(im, 1.0), "bad": im + 0.1 * rng.standard_normal(im.shape)}
                for im in images]

    peer = ep.tkrem_peer(frame, validation, scored, scale, runner=runner)
    assert calls == [2 * 6 + 1]  # the 6 LR subimages, their bicubic outputs, one LR context box
    assert peer["setting"].startswith("good on ")
    assert set(peer["validation"]) == {f"{m} on {p}" for m in ("good", "bad") for p in ep.TKREM_PLACES}
    assert peer["validation"][peer["setting"]] == max(peer["validation"].values()) > 0
    assert [s.shape for s in peer["scored"]] == [hr.shape for _, hr in scored]
    # without the frame (copies), the context place is not tried
    copies = [(lr.copy(), hr) for lr, hr in validation]
    assert "good on lr+ctx" not in ep.tkrem_peer(frame, copies, scored, scale, runner=runner)["validation"]


def _result(pair: str, scores: dict[str, float], with_ours: bool) -> dict:
    methods = {m: {"d_psnr": v, "d_ssim": v / 10, "frc_px": 5.0, "frc_px_bicubic": 5.5, "setting": "s"}
               for m, v in scores.items()}
    info = {"best_choice": "prior+ft", "fine_tune_s": 120.0, "fine_tune_best_step": 10, "fine_tune_steps": 20}
    return {"pair": pair, "scale": 2, "info": info if with_ours else {}, "methods": methods}


@pytest.mark.parametrize("with_ours", [True, False])
def test_tkrem_is_a_peer_in_the_tables_and_can_be_the_strongest(with_ours: bool) -> None:
    assert "tk-r-em" in quality.PEERS
    peers = {"blur": 0.1, "nlm": 0.2, "bm3d": 0.3, "tk-r-em": 0.5}
    ours = {m: 0.4 for m in quality.OURS} if with_ours else {}
    results = [_result("pair07", peers | ours, with_ours), _result("pair11", peers | ours, with_ours)]
    text = quality.render(results, "cmd", 60.0, 120.0)
    assert text.count("| pair | S | blur | nlm | bm3d | tk-r-em |") == 2  # the ΔPSNR and ΔSSIM tables
    assert "Strongest peer on the mean: tk-r-em (+0.50 dB)" in text
    assert "| pair07 | tk-r-em | +0.50 |" in text
    assert ("best +0.40 dB (-0.10 dB over it)" in text) == with_ours

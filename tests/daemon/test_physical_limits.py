"""Physical quantities and sizes are checked where they enter (issue 13, items 2, 3, 7 and 8).

Each test is one defect found on main: a pixel size of 1e300 or 1e-300 m in a ZMQ header, a sidecar in metres
typed into the nm field, an ``sigma_n`` that turns every output into NaN, a deflate "bomb" decoded before its
size was checked, refused frames kept in the learner's ring, and a reference labelled 2x finer when it was
4.17x finer, paired and learned at the wrong scale.
"""
from __future__ import annotations

import json
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile

from refscope.daemon.config import ConfigError, ModelConfig
from refscope.daemon.wire.control import ControlError, validate_request
from refscope.daemon.errors import InputFileError
from refscope.daemon.frames import PIXEL_SIZE_RANGE_NM, Frame, pixel_size_problem
from refscope.daemon.learn.pairing import MAX_REFERENCE_FACTOR, PairingError, RecentFrames, pair_reference
from refscope.daemon.wire.protocol import ProtocolError, decode_frame, encode_frame
from refscope.daemon.config.budget import MemoryBudget
from refscope.daemon.images import read_image, write_tiff
from refscope.models.library import LibraryConfig
from refscope.models.nlm import SIGMA_N_RANGE, PairedConfig
from refscope.models.pipeline import FitConfig
from refscope.models.registration import factor_scores
from refscope.models.synthetic import make_pair

# ------------------------------------------------------------------------------------------- pixel sizes


@pytest.mark.parametrize("pixel_size_m", [1e300, 1e-300, 5e-324, 2e-3, 1e-13])
def test_a_zmq_header_with_an_unphysical_pixel_size_is_refused_with_its_reason(pixel_size_m: float) -> None:
    parts = encode_frame(np.zeros((8, 8), np.uint16), seq=1, pixel_size_m=1e-8, role="lr")
    header = json.loads(parts[0])
    header["pixel_size_m"] = pixel_size_m
    with pytest.raises(ProtocolError, match=r"outside the physical range") as info:
        decode_frame([json.dumps(header).encode(), parts[1]], source="zmq:test")
    assert info.value.reason_code == "bad_value" and "zmq:test" in str(info.value)


def test_the_physical_range_is_1_pm_to_1_mm_and_a_metre_value_is_named() -> None:
    low, high = PIXEL_SIZE_RANGE_NM
    assert pixel_size_problem(low) is None and pixel_size_problem(high) is None and pixel_size_problem(26.98) is None
    for bad in (low / 2, high * 2, float("inf"), float("nan"), 0.0, -1.0):
        assert pixel_size_problem(bad) is not None
    assert "metres (26.98 nm?)" in pixel_size_problem(2.698e-08)
    with pytest.raises(ValueError, match=r"frame\.tif: pixel size 1e-300 nm is outside"):
        Frame(data=np.zeros((4, 4)), pixel_size_nm=1e-300, role="lr", source="frame.tif", seq=0, t=0.0)


def test_a_sidecar_in_metres_is_refused_naming_the_file_not_allocated(tmp_path: Path) -> None:
    """Issue 13.3: ``{"pixel_size_nm": 2.698e-08}`` made a 124 GiB allocation (MemoryError) in the learner."""
    image = tmp_path / "ref_HR.tif"
    tifffile.imwrite(image, np.zeros((16, 16), np.uint16))
    (tmp_path / "ref_HR.json").write_text(json.dumps({"pixel_size_nm": 2.698e-08}))
    with pytest.raises(InputFileError, match=r"ref_HR\.json: 'pixel_size_nm' of ref_HR\.tif: .*metres \(26\.98 nm\?\)"):
        read_image(image)
    with pytest.raises(ValueError, match="pixel_size_nm: pixel size 1e\\+09 nm is outside"):
        read_image(image, pixel_size_nm=1e9)


def test_vendor_metadata_with_an_unphysical_pixel_size_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "weird.tif"
    tifffile.imwrite(image, np.zeros((16, 16), np.uint16), description=json.dumps({"pixel_size_nm": 1e-30}))
    with pytest.raises(InputFileError, match=r"weird\.tif: its description metadata gives a pixel size 1e-30 nm"):
        read_image(image)
    assert read_image(image, pixel_size_nm=2.0).pixel_size_nm == 2.0  # the operator's value overrides it


# ------------------------------------------------------------------------------------------- decode limits


def _bomb(path: Path, side: int) -> None:
    """A small deflate TIFF that decodes to side² uint16 zeros, written tile by tile (never held whole)."""
    tile = np.zeros((1024, 1024), np.uint16)
    tiles = (tile for _ in range((side // 1024) ** 2))
    tifffile.imwrite(path, tiles, shape=(side, side), dtype=np.uint16, compression="zlib", tile=(1024, 1024))


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding(tmp_path: Path) -> None:
    """Issue 13.4: four 510 KB deflate TIFFs of 16384² took the daemon from 118 MB to 2.6 GB."""
    bomb = tmp_path / "bomb.tif"
    _bomb(bomb, 8192)  # 128 MB decoded
    assert bomb.stat().st_size < 2 << 20
    limit = MemoryBudget().input_bytes
    assert limit < 8192 * 8192 * 2
    tracemalloc.start()
    try:
        with pytest.raises(InputFileError, match=r"bomb\.tif: image of 8192 x 8192 px decodes to 128 MB, more than"):
            read_image(bomb, max_bytes=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20  # nothing near the decoded size was allocated
    small = tmp_path / "small.tif"
    _bomb(small, 1024)
    assert read_image(small, max_bytes=limit).data.shape == (1024, 1024)


def test_the_learners_recent_frames_are_bounded_in_bytes() -> None:
    def lr(i: int, side: int) -> Frame:
        return Frame(data=np.zeros((side, side), np.uint16), pixel_size_nm=10.0, role="lr", source=f"f{i}", seq=i,
                     t=0.0)

    ring = RecentFrames(16, max_bytes=3 * 100 * 100 * 2)
    for i in range(10):
        ring.add(lr(i, 100))
    assert [f.source for f in ring.snapshot()] == ["f7", "f8", "f9"] and ring.nbytes == 3 * 20000
    ring.add(lr(10, 400))  # one frame larger than the bound: only the newest stays
    assert [f.source for f in ring.snapshot()] == ["f10"] and ring.nbytes == 400 * 400 * 2
    ring.clear()
    assert ring.nbytes == 0 and len(ring) == 0


# ------------------------------------------------------------------------------------------- sigma_n


@pytest.mark.parametrize("value", [5e-324, 1e-5, 1e3, float("inf")])
def test_sigma_n_outside_its_documented_range_is_refused_everywhere(value: float) -> None:
    """Issue 13.7: ``set sigma_n 5e-324`` was accepted and made every output NaN while it stayed."""
    low, high = SIGMA_N_RANGE
    with pytest.raises(ControlError, match=r"sigma_n"):
        validate_request({"cmd": "set", "sigma_n": value})
    with pytest.raises(ValueError, match=r"PairedConfig\.sigma_n must lie in"):
        PairedConfig(sigma_n=value)
    with pytest.raises(ConfigError, match=r"model\.sigma_n"):
        ModelConfig(sigma_n=value)
    assert validate_request({"cmd": "set", "sigma_n": low})[1] == {"sigma_n": low}
    assert validate_request({"cmd": "set", "sigma_n": high})[1] == {"sigma_n": high}


# ------------------------------------------------------------------------------------------- the HR/LR factor


def _frame(data: np.ndarray, px: float, source: str) -> Frame:
    return Frame(data=data, pixel_size_nm=px, role="auto", source=source, seq=0, t=0.0)


def test_factor_scores_find_the_true_factor_of_a_mislabelled_reference() -> None:
    """Oracle: a synthetic HR 2x finer than its LR scores best at the true factor, whatever factor it is labelled
    with (half to twice the truth), and the pairing refuses the mislabelled ones."""
    scene = make_pair(rng=np.random.default_rng(7), lr_shape=(200, 240), factor=2.0, hr_fraction=0.2)
    config = FitConfig(scale=2, library=LibraryConfig(size=500, patch_size=9))
    lr = _frame(scene.lr, 10.0, "lr.tif")
    for label in (1.0, 2 ** -0.5, 0.5):  # labelled factor / true factor (a label below x2 cannot be paired at S=2)
        scores = factor_scores(scene.lr, scene.hr, factor=2.0 / label)
        assert max(scores, key=lambda r: scores[r] if np.isfinite(scores[r]) else -1) == pytest.approx(label)
        if label != 1.0:
            with pytest.raises(PairingError) as info:
                pair_reference(_frame(scene.hr, 5.0 * label, "hr.tif"), [lr], config=config)
            assert info.value.reason in ("factor_mismatch", "no_match")
    assert pair_reference(_frame(scene.hr, 5.0, "hr.tif"), [lr], config=config).geometry.score > 0.9


def test_real_references_whose_pixel_size_is_wrong_by_2x_are_not_paired(shared_data: Path) -> None:
    """Issue 13.8 on real pairs: the 2020-02-13 12000x reference of the 1200x frame (pair01, x10) labelled 4.8x
    finer registers with NCC 0.36 at that factor; the 5000x one (pair00, x4.17) labelled 8.3x finer with 0.46."""
    pairs = {p["pair"]: p for p in json.loads((shared_data / "sem_pairs" / "pairs.json").read_text())}
    raw = shared_data / "sem_pairs" / "raw"
    config = FitConfig(scale=2, library=LibraryConfig(size=500, patch_size=9))
    any_match = replace(config, min_relative_ncc=0.0)  # the factor check on its own, without the NCC threshold
    for name, wrong in (("pair01", 1 / 2.08), ("pair00", 2.0)):
        lr, hr = read_image(raw / pairs[name]["lr_file"]), read_image(raw / pairs[name]["hr_file"])
        lr_frame = _frame(lr.data, lr.pixel_size_nm, "lr.tif")
        labelled = _frame(hr.data, hr.pixel_size_nm / wrong, "hr.tif")
        with pytest.raises(PairingError) as info:
            pair_reference(labelled, [lr_frame], config=config)
        assert info.value.reason in ("factor_mismatch", "no_match")
        with pytest.raises(PairingError, match=r"matches far better .* than at the .* its pixel sizes say") as info:
            pair_reference(labelled, [lr_frame], config=any_match)
        assert info.value.reason == "factor_mismatch"
    right = pair_reference(_frame(hr.data, hr.pixel_size_nm, "hr.tif"), [lr_frame], config=config)
    assert right.factor == pytest.approx(pairs["pair00"]["nominal_factor"], rel=1e-3)


def test_a_reference_absurdly_finer_is_refused_before_any_registration() -> None:
    """Issue 13.3: an HR 1e6x finer tied the learner up for minutes (and 1e-300 m overflowed the registration)."""
    scene = make_pair(rng=np.random.default_rng(3), lr_shape=(120, 120), factor=2.0)
    lr = _frame(scene.lr, 1000.0, "lr.tif")
    config = FitConfig(scale=2, library=LibraryConfig(size=500, patch_size=9))
    for factor in (MAX_REFERENCE_FACTOR * 1.5, 5e5):
        with pytest.raises(PairingError, match=r"references may be at most 64x finer") as info:
            pair_reference(_frame(scene.hr, 1000.0 / factor, "hr.tif"), [lr], config=config)
        assert info.value.reason == "factor_out_of_range"


# ------------------------------------------------------------------------------------------- a running daemon


def test_the_daemon_refuses_oversized_inputs_before_they_enter_any_buffer(tmp_path: Path) -> None:
    """Issue 13.4: every LR frame, refused or not, entered the learner's ring, and the size limit ignored the output
    scale (``set scale 8`` + a 2048² frame -> 4.2 GB); a deflate bomb was decoded before its size was checked."""
    import resource

    from tests.daemon.service.test_service import FAST_FOLDER, control_status, make_config, outputs
    from waiting import wait_for

    from refscope.daemon.service.daemon import Daemon

    watch, out = tmp_path / "in", tmp_path / "out"
    watch.mkdir()
    config = make_config(tmp_path, **{"ingest.watch": str(watch), "publish.out_dir": str(out), "model.scale": "8"})
    daemon = Daemon(config, folder_options=FAST_FOLDER)
    daemon.start()
    try:
        before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _bomb(watch / "bomb.tif", 16384)  # 512 MB decoded, a few hundred KB on disk
        # 1 GB of output at x8 (calibrated: an uncalibrated file is refused before, for its unknown pixel size)
        tifffile.imwrite(watch / "big.tif", np.full((2048, 2048), 100, np.uint16), imagej=True,
                         resolution=(1e3 / 10.0, 1e3 / 10.0), metadata={"unit": "micron"})
        write_tiff(watch / "small.tif", np.random.default_rng(0).integers(0, 999, (64, 64)).astype(np.uint16),
                   pixel_size_nm=10.0)
        wait_for(lambda: len(outputs(out)) == 1, 30, "the small frame enhanced")
        wait_for(lambda: control_status(daemon)["errors_by_reason"].get("too_large") == 1, 30, "big.tif refused")
        status = control_status(daemon)
        assert [p.name for p in outputs(out)] == ["small_x8.tif"]
        ingest = f"folder:{watch}"
        wait_for(lambda: control_status(daemon)["ingest"][ingest]["rejected"] == 1, 30, "the bomb refused")
        assert "bomb.tif" in control_status(daemon)["ingest"][ingest]["last_error"]
        assert "big.tif" in status["last_error"] and "x8" in status["last_error"]
        assert status["learner"]["recent_frames"] == 1  # only the frame the daemon enhanced
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) / 1024
        assert grown_mb < 300, f"peak memory grew by {grown_mb:.0f} MB"
    finally:
        daemon.stop()

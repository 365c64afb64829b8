"""Role classification, candidate choice by stage position, and finding the LR frame an HR reference was taken in."""
from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from refscope.daemon.config import IngestConfig
from refscope.daemon.frames import Frame
from refscope.daemon.learn.pairing import (PairingError, PairingHooks, RecentFrames, RoleClassifier, classify,
                                     decide_role, pair_reference)
from refscope.models.library import LibraryConfig
from refscope.models.pipeline import FitConfig
from refscope.models.synthetic import SyntheticPair, make_pair

CONFIG = FitConfig(scale=2, library=LibraryConfig(size=2000, patch_size=9))


def frame(data: np.ndarray | None = None, *, px: float | None = 10.0, role: str = "auto", source: str = "f.tif",
          seq: int = 0, stage: tuple[float, float] | None = None, fov: tuple[float, float] | None = None) -> Frame:
    if data is None:
        data = np.zeros((16, 16), np.uint16)
    return Frame(data=data, pixel_size_nm=px, role=role, source=source, seq=seq, t=0.0,  # type: ignore[arg-type]
                 stage_xy_m=stage, field_of_view_nm=fov)


@pytest.fixture(scope="module")
def scenes() -> list[SyntheticPair]:
    """Three unrelated synthetic scenes, LR 160x200 at 10 nm, HR 160x200 at 5 nm (25 % of the LR field)."""
    rng = np.random.default_rng(2024)
    return [make_pair(rng=rng, lr_shape=(160, 200), factor=2.0) for _ in range(3)]


# ------------------------------------------------------------------------------------------------ roles


def test_classify_explicit_role_then_file_name_then_pixel_size() -> None:
    ingest = IngestConfig(watch=None, zmq_endpoint="tcp://127.0.0.1:5555", hr_filename_pattern="*_HR.tif",
                          lr_filename_pattern="*_LR.tif")
    # 1. an explicit role wins over the name and the pixel size
    assert classify(frame(role="lr", source="/d/a_HR.tif", px=1.0), ingest=ingest, lr_pixel_size_nm=10.0) == "lr"
    assert classify(frame(role="hr", source="/d/a_LR.tif", px=10.0), ingest=ingest, lr_pixel_size_nm=10.0) == "hr"
    # 2. the file-name rule (case-insensitive) wins over the pixel size
    assert classify(frame(source="/d/a_hr.TIF", px=10.0), ingest=ingest, lr_pixel_size_nm=10.0) == "hr"
    assert classify(frame(source="/d/a_LR.tif", px=1.0), ingest=ingest, lr_pixel_size_nm=10.0) == "lr"
    # 3. pixel size: finer by more than 1.2x is HR
    assert classify(frame(source="/d/a.tif", px=5.0), ingest=ingest, lr_pixel_size_nm=10.0) == "hr"
    assert classify(frame(source="/d/a.tif", px=8.5), ingest=ingest, lr_pixel_size_nm=10.0) == "lr"  # 1.18x
    assert classify(frame(source="/d/a.tif", px=20.0), ingest=ingest, lr_pixel_size_nm=10.0) == "lr"  # coarser
    # unknown LR stream or unknown pixel size: a live frame
    assert classify(frame(source="/d/a.tif", px=1.0), ingest=ingest, lr_pixel_size_nm=None) == "lr"
    assert classify(frame(source="zmq:tcp://h:1#3", px=None), ingest=ingest, lr_pixel_size_nm=10.0) == "lr"


def test_role_classifier_first_frame_defines_the_lr_stream() -> None:
    ingest = IngestConfig(watch=None, zmq_endpoint="tcp://127.0.0.1:5555")
    roles = RoleClassifier(ingest)
    assert roles.lr_pixel_size_nm is None
    assert roles(frame(px=10.0)) == "lr" and roles.lr_pixel_size_nm == 10.0
    assert roles(frame(px=4.0)) == "hr" and roles.lr_pixel_size_nm == 10.0  # references do not move it
    assert roles(frame(px=None)) == "lr" and roles.lr_pixel_size_nm == 10.0
    assert roles(frame(px=20.0)) == "lr" and roles.lr_pixel_size_nm == 20.0  # magnification changed
    assert roles(frame(px=10.0)) == "hr"


# ------------------------------------------------------------------------------------------- recent, hooks


def test_recent_frames_keeps_the_newest() -> None:
    recent = RecentFrames(3)
    frames = [frame(source=f"f{i}.tif", seq=i) for i in range(5)]
    threads = [threading.Thread(target=recent.add, args=(f,)) for f in frames[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in frames[2:]:
        recent.add(f)
    assert [f.source for f in recent.snapshot()] == ["f2.tif", "f3.tif", "f4.tif"] and len(recent) == 3
    recent.clear()
    assert recent.snapshot() == []
    with pytest.raises(ValueError, match="maxlen"):
        RecentFrames(0)


def test_a_fused_frame_replaces_its_source_within_the_byte_bound() -> None:
    """``replace_source`` puts a fused frame in place of the held one with its source; bytes stay counted and
    bounded (the oldest go first), and a source not held changes nothing."""
    small = [frame(source=f"f{i}.tif", seq=i) for i in range(3)]
    size = small[0].data.nbytes
    recent = RecentFrames(5, max_bytes=3 * size + size // 2)
    for f in small:
        recent.add(f)
    bigger = frame(source="f2.tif", seq=2)
    bigger = replace(bigger, data=np.zeros((2 * bigger.data.shape[0], bigger.data.shape[1]), bigger.data.dtype))
    assert recent.replace_source(bigger)
    assert [f.source for f in recent.snapshot()] == ["f1.tif", "f2.tif"]  # 1 + 1 + 2 sizes > 3.5: f0 dropped
    assert recent.snapshot()[-1] is bigger and recent.nbytes == 3 * size
    assert not recent.replace_source(frame(source="elsewhere.tif", seq=9))
    assert recent.nbytes == 3 * size


def test_candidates_by_stage_position_and_field_of_view() -> None:
    lr_fov = (1600.0, 2000.0)  # nm (y, x)
    here = frame(source="here.tif", stage=(0.0, 0.0), fov=lr_fov)
    here_later = frame(source="here_later.tif", stage=(100e-9, 0.0), fov=lr_fov)
    elsewhere = frame(source="elsewhere.tif", stage=(50e-6, 0.0), fov=lr_fov)
    edge = frame(source="edge.tif", stage=(-700e-9, 0.0), fov=lr_fov)  # HR pokes out by 250 nm of 1000
    unknown = frame(source="unknown.tif")
    recent = [here, elsewhere, unknown, edge, here_later]  # oldest first
    hr = frame(source="hr.tif", px=5.0, stage=(50e-9, -100e-9), fov=(800.0, 1000.0))
    hooks = PairingHooks()
    # those known to contain the HR field, newest first, then those without stage information
    assert [f.source for f in hooks.candidates(hr, recent)] == ["here_later.tif", "here.tif", "unknown.tif"]
    assert hooks.contains(edge, hr) is False and hooks.contains(unknown, hr) is None
    assert hooks.contains(edge, replace(hr, stage_xy_m=(-400e-9, 0.0))) is True
    # an HR frame without stage information: every recent frame, newest first
    assert hooks.candidates(frame(source="hr2.tif", px=5.0), recent) == list(reversed(recent))
    with pytest.raises(ValueError, match="tolerance"):
        PairingHooks(tolerance=-1)


# ---------------------------------------------------------------------------------------------- pairing


def test_finds_the_right_lr_frame_among_unrelated_ones_and_recovers_the_offset(scenes) -> None:
    right, other1, other2 = scenes
    recent = [frame(right.lr, source="right.tif", seq=0), frame(other1.lr, source="other1.tif", seq=1),
              frame(other2.lr, source="other2.tif", seq=2)]  # the unrelated ones are newer: tried first
    hr = frame(right.hr, px=right.hr_pixel_size_nm, source="ref_hr.tif")
    pair = pair_reference(hr, recent, config=CONFIG)
    assert (pair.hr_source, pair.lr_source) == ("ref_hr.tif", "right.tif")
    np.testing.assert_allclose(pair.geometry.offset_yx, right.offset_yx, atol=0.2)
    assert pair.geometry.score > 0.9 and pair.factor == pytest.approx(2.0)
    h, w = pair.lr_region.shape
    assert pair.hr_grid.shape == (2 * h, 2 * w)
    (y0, y1), (x0, x1) = pair.box
    assert (y1 - y0, x1 - x0) == (h, w) and h >= 70 and w >= 90  # the HR field is ~80 x 100 LR px
    np.testing.assert_array_equal(pair.lr_region, right.lr[y0:y1, x0:x1])


def test_reference_matching_nothing_names_itself_and_the_best_ncc(scenes) -> None:
    right, other1, other2 = scenes
    recent = [frame(other1.lr, source="other1.tif"), frame(other2.lr, source="other2.tif")]
    hr = frame(right.hr, px=5.0, source="lost_hr.tif")
    with pytest.raises(PairingError, match=r"HR reference lost_hr\.tif matches none of the 2 recent LR frames "
                                           r"\(best NCC -?\d\.\d\d\)") as info:
        pair_reference(hr, recent, config=CONFIG)
    assert info.value.reason == "no_match" and info.value.best_ncc is not None and info.value.best_ncc < 0.3


def test_pixel_size_problems_are_reported(scenes) -> None:
    right = scenes[0]
    lr = frame(right.lr, source="lr.tif", px=10.0)
    with pytest.raises(PairingError, match="no LR frame received yet") as info:
        pair_reference(frame(right.hr, px=5.0, source="hr.tif"), [], config=CONFIG)
    assert info.value.reason == "no_lr_frames"
    with pytest.raises(PairingError, match=r"hr\.tif: pixel size unknown") as info:
        pair_reference(frame(right.hr, px=None, source="hr.tif"), [lr], config=CONFIG)
    assert info.value.reason == "unknown_pixel_size"
    with pytest.raises(PairingError, match=r"mismatched scale: hr\.tif is only 1\.5x finer than LR frame lr\.tif") as info:
        pair_reference(frame(right.hr, px=10.0 / 1.5, source="hr.tif"), [lr], config=CONFIG)
    assert info.value.reason == "mismatched_scale"
    with pytest.raises(PairingError, match="has no pixel size") as info:
        pair_reference(frame(right.hr, px=5.0, source="hr.tif"), [frame(right.lr, px=None)], config=CONFIG)
    assert info.value.reason == "unknown_pixel_size"
    with pytest.raises(PairingError, match="unusable image") as info:
        pair_reference(frame(np.ones((160, 200)), px=5.0, source="flat.tif"), [lr], config=CONFIG)
    assert info.value.reason == "unusable_image"


def test_stage_positions_exclude_every_frame(scenes) -> None:
    right = scenes[0]
    lr = frame(right.lr, source="lr.tif", stage=(0.0, 0.0), fov=(1600.0, 2000.0))
    hr = frame(right.hr, px=5.0, source="hr.tif", stage=(1e-3, 0.0), fov=(800.0, 1000.0))
    with pytest.raises(PairingError, match="none of the 1 recent LR frames contains its field") as info:
        pair_reference(hr, [lr], config=CONFIG)
    assert info.value.reason == "no_candidates"


ZMQ = "tcp://127.0.0.1:5555"


def test_a_zoom_series_makes_each_finer_frame_a_reference_and_a_live_frame():
    """Issue 18: 1200x -> 5000x -> 12000x -> 1200x (112.4, 27.0, 11.2 nm/px): every zoom-in is both the reference
    for the field it came from and the live frame the operator is now looking at; zooming out is a live frame."""
    classifier = RoleClassifier(IngestConfig(zmq_endpoint=ZMQ))
    series = [("a_1200x.tif", 112.41), ("b_5000x.tif", 26.98), ("c_5000x.tif", 26.98), ("d_12000x.tif", 11.24),
              ("e_1200x.tif", 112.41), ("f_5000x.tif", 26.98)]
    decisions = [classifier.decide(frame(px=px, source=name)) for name, px in series]
    assert [d.role for d in decisions] == ["lr", "both", "lr", "both", "lr", "both"]
    assert [d.live for d in decisions] == [True] * 6
    assert [d.reference for d in decisions] == [False, True, False, True, False, True]
    assert "4.17x finer than the live stream (112.4 nm/px)" in decisions[1].reason
    assert "2.4x finer" in decisions[3].reason and "coarser" in decisions[4].reason
    assert "live stream's magnification" in decisions[2].reason
    assert classifier.lr_pixel_size_nm == pytest.approx(26.98)


def test_explicit_roles_and_name_rules_keep_one_role_and_serve_finer_can_be_off():
    ingest = IngestConfig(zmq_endpoint=ZMQ, hr_filename_pattern="*_HR.tif")
    named = decide_role(frame(px=5.0, source="x_HR.tif"), ingest=ingest, lr_pixel_size_nm=10.0)
    assert named.role == "hr" and not named.live and "hr_filename_pattern" in named.reason
    sent = decide_role(frame(px=5.0, role="hr"), ingest=ingest, lr_pixel_size_nm=10.0)
    assert sent.role == "hr" and "sender" in sent.reason
    off = decide_role(frame(px=5.0), ingest=IngestConfig(zmq_endpoint=ZMQ), lr_pixel_size_nm=10.0, serve_finer=False)
    assert off.role == "hr" and not off.live
    # the old classify() still answers "lr"/"hr" as before
    assert classify(frame(px=5.0), ingest=IngestConfig(zmq_endpoint=ZMQ), lr_pixel_size_nm=10.0) == "hr"
    assert decide_role(frame(px=None), ingest=IngestConfig(zmq_endpoint=ZMQ), lr_pixel_size_nm=10.0).role == "lr"


def test_a_reference_at_a_larger_factor_is_resampled_to_the_model_scale():
    """A 10x finer reference (12000x into 1200x) trains the x4 model on the HR resampled onto the 4x grid of the
    overlap, never at its own factor; one only 2.4x finer is refused for a x4 model."""
    rng = np.random.default_rng(7)
    pair = make_pair(rng=rng, lr_shape=(120, 150), factor=10.0, hr_fraction=0.4)
    lr = frame(pair.lr.astype(np.float32), px=100.0, source="lr.tif", role="lr")
    hr = frame(pair.hr.astype(np.float32), px=10.0, source="hr.tif", role="hr")
    x4 = FitConfig(scale=4, library=LibraryConfig(size=500, patch_size=9))
    result = pair_reference(hr, [lr], config=x4)
    (y0, y1), (x0, x1) = result.box
    assert result.factor == pytest.approx(10.0)
    assert result.hr_grid.shape == (4 * (y1 - y0), 4 * (x1 - x0))
    coarse = frame(pair.hr.astype(np.float32), px=100.0 / 2.4, source="hr24.tif", role="hr")
    with pytest.raises(PairingError) as caught:
        pair_reference(coarse, [lr], config=x4)
    assert caught.value.reason == "mismatched_scale"

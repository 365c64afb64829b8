"""A model meets a frame from another microscope (issue 15, item 2) -- the case the issue was filed on, on real files.

A library fitted on 16-bit FEI frames at 26.98 nm/px (``sem_pairs`` pair07, 5000x -> 12000x) is applied to an
8-bit Zeiss InLens frame at 11.65 nm/px (``hr_only/zeiss_sem``): ``enhance`` and ``batch`` warn, naming the pixel
size, the bit depth and the detector; ``--strict`` refuses with exit code 2. The daemon's side is tested in
``test_service.py`` (logged, counted, in the status, served all the same).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from refscope.daemon.cli import main
from refscope.daemon.state.model_store import load_domain


@pytest.fixture(scope="module")
def fei_state(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = shared_data / "sem_pairs" / "raw"
    state = tmp_path_factory.mktemp("fei") / "state"
    assert main(["fit", str(raw / "96336e__NiO_DC_5000x_E.tif"), str(raw / "f63c41__NiO_DC_12000x_D.tif"),
                 "-o", str(state), "--library-size", "500", "-q"]) == 0
    return state


def test_the_fitted_model_records_its_fei_domain(fei_state: Path) -> None:
    domain = load_domain(fei_state)
    assert domain is not None
    assert domain.pixel_size_nm == pytest.approx(26.98, rel=1e-3) and domain.dtype == "uint16"
    assert domain.vendor == "fei" and "ETD" in (domain.detector or "")


@pytest.mark.parametrize("command", ["enhance", "batch"])
def test_a_zeiss_frame_is_outside_the_fei_models_domain(command: str, fei_state: Path, shared_data: Path,
                                                        tmp_path: Path, capsys) -> None:
    zeiss = shared_data / "hr_only" / "zeiss_sem" / "test_tiff_Zeiss_SEM_512pix.tif"
    extra = ["--method", "bicubic"] if command == "enhance" else ["--quiet"]  # the check comes before the compute
    assert main([command, str(fei_state), str(zeiss), "-o", str(tmp_path / "a.tif"), *extra]) == 0
    err = capsys.readouterr().err
    assert f"warning: {zeiss}: outside the model's domain" in err
    assert "pixel size 11.65 nm, the model's 26.98 nm" in err
    assert "pixel type uint8, the model's uint16 (another bit depth)" in err
    assert "detector InLens" in err
    assert main([command, str(fei_state), str(zeiss), "-o", str(tmp_path / "b.tif"), "--strict", *extra]) == 2
    assert "(--strict)" in capsys.readouterr().err and not (tmp_path / "b.tif").exists()


def test_the_daemon_logs_a_change_of_what_differs_not_each_frame(caplog) -> None:
    """DomainWatch: one warning while frames stay outside the same way (another pixel size value is no news), a new
    one when what differs changes (a detector differs, then another one), none inside the domain; every frame outside is counted."""
    import logging

    import numpy as np

    from refscope.daemon.frames import Frame
    from refscope.daemon.state.model_domain import DomainWatch, ModelDomain

    def frame(px: float, detector: str, seq: int) -> Frame:
        return Frame(np.zeros((8, 8), np.uint16), px, "lr", f"mem:{seq}", seq, 0.0, metadata={"detector": detector})

    watch = DomainWatch(logging.getLogger("test.domain"))
    watch.set_model(ModelDomain(pixel_size_nm=10.0, dtype="uint16", detector="ETD"))
    caplog.set_level(logging.WARNING, logger="test.domain")
    assert watch.check(frame(10.0, "ETD", 0)) == []
    for seq, (px, detector) in enumerate([(4.0, "ETD"), (4.5, "ETD"), (4.5, "TLD"), (4.0, "InLens")], start=1):
        watch.check(frame(px, detector, seq))
    warned = [r.getMessage() for r in caplog.records]
    assert [w.split(":")[0] + ":" + w.split(":")[1] for w in warned] == ["mem:1", "mem:3", "mem:4"]
    assert "detector TLD, the model's ETD" in warned[1] and "detector InLens" in warned[2]
    assert watch.status()["frames_outside"] == 4

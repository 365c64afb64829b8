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
from refscope.daemon.model_store import load_domain


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

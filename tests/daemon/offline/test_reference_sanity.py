"""`fit` refuses references that are not of the LR frame's field (issue 15, item 1), on the real FEI frames.

Oracle: ``sem_pairs/pairs.json`` lists the hand-checked true pairs; every other (LR, finer HR) combination of the
raw frames is another place of the specimen or another specimen. Two independent signals refuse them: the stage
positions in the metadata (instant) and the registration score relative to the NCC a true match can reach at the
LR frame's noise (``FitConfig.min_relative_ncc``).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from refscope.daemon.cli import main
from refscope.daemon.offline.files import check_stage_positions
from refscope.daemon.errors import InputFileError
from refscope.daemon.images import read_image
from refscope.models.errors import RegistrationError
from refscope.models.image_ops import as_gray_float
from refscope.models.pipeline import FitConfig, register_reference


@pytest.fixture(scope="module")
def raw(shared_data: Path) -> tuple[dict, set[tuple[str, str]]]:
    folder = shared_data / "sem_pairs" / "raw"
    images = {p.name: read_image(p) for p in sorted(folder.glob("*.tif"))}
    true = {(p["lr_file"], p["hr_file"]) for p in json.loads((shared_data / "sem_pairs" / "pairs.json").read_text())}
    return images, true


def _combinations(images: dict) -> list[tuple[str, str]]:
    """(LR, HR) name pairs where the HR is at least 2x finer (a possible reference at S = 2)."""
    return [(lr, hr) for lr, hr in itertools.permutations(images, 2)
            if images[lr].pixel_size_nm / images[hr].pixel_size_nm >= 2 * 0.999]


def test_every_wrong_area_combination_is_refused_by_its_stage_position_and_every_true_pair_kept(raw) -> None:
    images, true = raw
    combos = _combinations(images)
    wrong = [c for c in combos if c not in true]
    assert len(wrong) >= 30 and true <= set(combos)
    for lr, hr in wrong:
        with pytest.raises(InputFileError, match=r"stage position .* lies outside the field of .*--force"):
            check_stage_positions(images[lr], images[hr])
    for lr, hr in true:
        check_stage_positions(images[lr], images[hr])  # no error


@pytest.mark.parametrize("lr_name, hr_name, is_true", [
    ("3b9a58", "96336e", True), ("de7d85", "0d7d18", True), ("aac7dd", "a9aac1", True),
    ("3b9a58", "0d7d18", False),  # the most similar wrong one: same specimen and session, 1.8 mm away (NCC 0.60)
    ("96336e", "eb188e", False),  # another specimen (the case `fit` accepted at NCC 0.365)
    ("4842d6", "c2da01", False),
])
def test_the_registration_refuses_wrong_areas_without_stage_positions(raw, lr_name: str, hr_name: str,
                                                                      is_true: bool) -> None:
    images, _ = raw
    lr = next(v for k, v in images.items() if k.startswith(lr_name))
    hr = next(v for k, v in images.items() if k.startswith(hr_name))
    factor = lr.pixel_size_nm / hr.pixel_size_nm
    lr_data, hr_data = as_gray_float(lr.data), as_gray_float(hr.data)
    if is_true:
        assert register_reference(lr_data, hr_data, factor=factor, config=FitConfig()).score > 0.9
    else:
        with pytest.raises(RegistrationError, match=r"a true match reaches at this frame's noise"):
            register_reference(lr_data, hr_data, factor=factor, config=FitConfig())
        # the old threshold (any NCC above 0.3) would have taken it
        assert register_reference(lr_data, hr_data, factor=factor, config=FitConfig(min_relative_ncc=0.0)).score > 0.3


def test_fit_refuses_a_reference_of_another_specimen_and_force_overrides(raw, tmp_path: Path, capsys) -> None:
    images, _ = raw
    lr = next(p for p in images.values() if p.path.name.startswith("96336e")).path
    hr = next(p for p in images.values() if p.path.name.startswith("eb188e")).path
    assert main(["fit", str(lr), str(hr), "-o", str(tmp_path / "m"), "--library-size", "500"]) == 2
    err = capsys.readouterr().err
    assert "eb188e" in err and "lies outside the field of" in err and "--force" in err
    assert not (tmp_path / "m").exists()
    assert main(["fit", str(lr), str(hr), "-o", str(tmp_path / "m"), "--library-size", "500", "--force"]) == 0

"""The Python API (issue 15, item 8): ``refscope.read_image``, ``fit``, ``enhance``, ``evaluate``,
``plot_evaluation`` and a ``Model`` with ``.enhance(array)``, checked against the commands they wrap (oracle: the
same computation through ``refscope.models`` and the CLI's saved state)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import refscope
from refscope.daemon.cli import main
from refscope.daemon.errors import InputFileError
from refscope.daemon.images import write_tiff
from refscope.models import enhance as models_enhance
from refscope.models.synthetic import make_pair


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    folder = tmp_path_factory.mktemp("api")
    pair = make_pair(rng=np.random.default_rng(5), lr_shape=(96, 128), factor=2.0)
    write_tiff(folder / "lr.tif", pair.lr.astype(np.float32), pixel_size_nm=pair.lr_pixel_size_nm)
    write_tiff(folder / "hr.tif", pair.hr.astype(np.float32), pixel_size_nm=pair.hr_pixel_size_nm)
    return folder / "lr.tif", folder / "hr.tif", pair


@pytest.fixture(scope="module")
def model(pair_files) -> refscope.Model:
    lr, hr, _ = pair_files
    return refscope.fit(lr, [hr], scale=2, library_size=800)


def test_the_api_is_the_packages_top_level_and_costs_the_commands_nothing() -> None:
    assert {"read_image", "fit", "enhance", "evaluate", "plot_evaluation", "Model", "load_model"} <= set(refscope.__all__)
    assert refscope.__version__
    code = "import sys, refscope.daemon.cli; print('refscope._api' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        refscope.nope  # noqa: B018


def test_read_fit_enhance_from_files_match_the_models_layer(pair_files, model, tmp_path) -> None:
    lr_path, _, pair = pair_files
    lr = refscope.read_image(lr_path)
    assert lr.data.shape == (96, 128) and lr.pixel_size_nm == pytest.approx(pair.lr_pixel_size_nm)
    assert model.scale == 2 and model.domain.pixel_size_nm == pytest.approx(pair.lr_pixel_size_nm)
    sr = model.enhance(lr.data)  # a plain array
    assert sr.shape == (192, 256) and sr.dtype == np.float64
    np.testing.assert_array_equal(sr, models_enhance(lr.data.astype(np.float64), model.fitted))
    np.testing.assert_array_equal(refscope.enhance(lr_path, model), sr)  # a path, through the function
    # saved where `refscope enhance` finds it, and loaded back to the same pixels
    state = model.save(tmp_path / "state")
    np.testing.assert_array_equal(refscope.load_model(state).enhance(lr), sr)
    assert main(["enhance", str(state), str(lr_path), "-o", str(tmp_path / "out.tif"), "--engine", "numpy",
                 "--dtype", "float32"]) == 0
    np.testing.assert_allclose(refscope.read_image(tmp_path / "out.tif").data, sr, rtol=1e-5, atol=1e-5)


def test_arrays_need_pixel_sizes_and_wrong_inputs_are_named(pair_files, model) -> None:
    _, _, pair = pair_files
    with pytest.raises(InputFileError, match="<LR array>: pixel size unknown.*lr_pixel_size_nm"):
        refscope.fit(pair.lr, [pair.hr], scale=2)
    fitted = refscope.fit(pair.lr, pair.hr, scale=2, lr_pixel_size_nm=pair.lr_pixel_size_nm,
                          hr_pixel_size_nm=pair.hr_pixel_size_nm, library_size=500)
    assert fitted.enhance(pair.lr).shape == (192, 256)
    with pytest.raises(TypeError, match="frame: expected a file path"):
        model.enhance([[1, 2], [3, 4]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method: choose one of"):
        model.enhance(pair.lr, method="magic")


def test_a_frame_outside_the_models_domain_warns_and_strict_refuses(model, tmp_path, pair_files) -> None:
    _, _, pair = pair_files
    foreign = tmp_path / "foreign.tif"
    write_tiff(foreign, np.clip(pair.lr * 250, 0, 255).astype(np.uint8), pixel_size_nm=4.0)
    with pytest.warns(UserWarning, match="pixel size 4 nm.*pixel type uint8"):
        model.enhance(foreign, method="bicubic")
    with pytest.raises(ValueError, match=r"outside the model's domain.*\(strict\)"):
        model.enhance(foreign, strict=True)


def test_evaluate_and_plot_evaluation(pair_files, tmp_path) -> None:
    lr, hr, _ = pair_files
    report = refscope.evaluate(lr, hr, methods=("paired",))
    assert {r["method"] for r in report.summary()} == {"paired"} and report.scale == 2
    assert list(report.panel) == ["LR", "bicubic", "paired", "HR"]
    figure = refscope.plot_evaluation(report, tmp_path / "eval.png")
    assert (tmp_path / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(figure.axes) == 2 + 4

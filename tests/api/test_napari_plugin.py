"""The napari plugin (issue 15, item 8): the reader gives layers with the pixel size as scale and the vendor
metadata, the widget fits on an LR and an HR layer and returns the enhanced LR layer placed on it.

napari and Qt are an optional extra (``refscope[napari]``), not installed by ``make test``: the reader and the widget
function are plain Python and are tested here with duck-typed layers; the manifest is checked against the
functions it names; the last test opens a headless napari viewer and is skipped where napari is absent.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from refscope.daemon.cli import main
from refscope.daemon.images import write_tiff
from refscope.models.synthetic import make_pair
from refscope.napari import fit_and_enhance, get_reader, read_layers

MANIFEST = Path(importlib.import_module("refscope.napari").__file__).with_name("napari.yaml")


@dataclass
class Layer:
    """What the widget reads of a napari image layer."""

    data: np.ndarray
    scale: tuple[float, ...]
    name: str
    metadata: dict[str, Any] = field(default_factory=dict)
    translate: tuple[float, ...] = (0.0, 0.0)


@pytest.fixture(scope="module")
def pair():
    return make_pair(rng=np.random.default_rng(21), lr_shape=(96, 128), factor=2.0, lr_pixel_size_nm=10.0)


def test_the_manifest_names_functions_that_exist_and_is_declared_as_the_entry_point() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text())
    assert manifest["name"] == "refscope"
    commands = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    for python_name in commands.values():
        module, _, attr = python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), python_name
    assert {r["command"] for r in manifest["contributions"]["readers"]} <= set(commands)
    assert {w["command"] for w in manifest["contributions"]["widgets"]} <= set(commands)
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert 'refscope = "refscope.napari:napari.yaml"' in pyproject and '"refscope.napari" = ["napari.yaml"]' in pyproject
    try:
        from npe2 import PluginManifest
    except ImportError:
        return
    PluginManifest.from_file(MANIFEST)  # npe2's own validation where it is installed


def test_the_reader_opens_a_vendor_tiff_with_its_pixel_size_as_scale(shared_data: Path) -> None:
    path = shared_data / "sem_pairs" / "raw" / "96336e__NiO_DC_5000x_E.tif"
    assert get_reader(str(path)) is read_layers and get_reader("notes.txt") is None
    ((data, kwargs, kind),) = read_layers(str(path))
    assert kind == "image" and data.dtype == np.uint16 and data.shape == (1024, 1536)  # data bar cropped
    assert kwargs["scale"] == pytest.approx((26.98, 26.98), rel=1e-3)
    assert kwargs["metadata"]["source_vendor"] == "fei" and "ETD" in kwargs["metadata"]["detector"]
    assert kwargs["metadata"]["hv_V"] == pytest.approx(5000)


def test_the_reader_opens_a_refscope_output_with_its_provenance(pair, tmp_path: Path) -> None:
    write_tiff(tmp_path / "lr.tif", pair.lr.astype(np.float32), pixel_size_nm=10.0)
    write_tiff(tmp_path / "hr.tif", pair.hr.astype(np.float32), pixel_size_nm=5.0)
    assert main(["fit", str(tmp_path / "lr.tif"), str(tmp_path / "hr.tif"), "-o", str(tmp_path / "state"),
                 "--library-size", "500", "-q"]) == 0
    assert main(["enhance", str(tmp_path / "state"), str(tmp_path / "lr.tif"), "-o", str(tmp_path / "out.tif"),
                 "--method", "bicubic"]) == 0
    ((data, kwargs, _),) = read_layers([str(tmp_path / "out.tif")])
    assert data.shape == (192, 256) and kwargs["scale"] == pytest.approx((5.0, 5.0), rel=1e-4)
    assert kwargs["metadata"]["method"] == "bicubic" and kwargs["metadata"]["source_sha256"]


def test_the_widget_fits_on_two_layers_and_returns_the_enhanced_lr_layer_on_top_of_it(pair) -> None:
    lr = Layer(pair.lr.astype(np.float32), (10.0, 10.0), "lr", translate=(100.0, 200.0))
    hr = Layer(pair.hr.astype(np.float32), (5.0, 5.0), "hr", metadata={"pixel_size_nm": 5.0})
    data, kwargs, kind = fit_and_enhance(lr, hr, scale=2, library_size=600)
    assert kind == "image" and data.shape == (192, 256) and data.dtype == np.float32
    assert kwargs["scale"] == (5.0, 5.0) and kwargs["name"] == "lr x2 (paired)"
    # outer edges meet: LR edge at translate - 10/2, enhanced edge at its translate - 5/2
    assert kwargs["translate"] == pytest.approx((100.0 - 2.5, 200.0 - 2.5))
    lo, hi = np.percentile(pair.lr, [1, 99])
    assert lo - 0.2 * (hi - lo) < float(np.median(data)) < hi + 0.2 * (hi - lo)  # in the LR's intensity units


def test_the_widget_names_the_layer_whose_pixel_size_is_missing_or_too_coarse(pair) -> None:
    lr = Layer(pair.lr, (1.0, 1.0), "lr")  # napari's default scale: uncalibrated
    hr = Layer(pair.hr, (5.0, 5.0), "hr")
    with pytest.raises(ValueError, match="layer 'lr': pixel size unknown"):
        fit_and_enhance(lr, hr)
    with pytest.raises(ValueError, match="layer 'hr' .* is only 2x finer .* x3 needs"):
        fit_and_enhance(Layer(pair.lr, (10.0, 10.0), "lr"), hr, scale=3)


def test_in_napari_headless(pair, shared_data: Path, monkeypatch) -> None:
    """napari's own machinery, without a display: the plugin found by npe2, a vendor TIFF opened through it into a
    viewer model, the widget's form generated by magicgui from the function's signature, its result added."""
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    napari = pytest.importorskip("napari")
    pytest.importorskip("qtpy.QtWidgets", reason="napari is installed without Qt bindings (magicgui needs them)")
    import npe2
    from magicgui import magicgui
    from napari.components import ViewerModel

    npe2.PluginManager.instance().discover()  # what napari's start-up does: refscope is found by its entry point
    assert npe2.PluginManager.instance().get_manifest("refscope").name == "refscope"

    viewer = ViewerModel()  # the viewer without its Qt window (no OpenGL needed)
    path = shared_data / "sem_pairs" / "raw" / "96336e__NiO_DC_5000x_E.tif"
    (layer,) = viewer.open(str(path), plugin="refscope")
    assert tuple(layer.scale) == pytest.approx((26.98, 26.98), rel=1e-3) and layer.metadata["source_vendor"] == "fei"
    lr = viewer.add_image(pair.lr.astype(np.float32), name="lr", scale=(10.0, 10.0))
    hr = viewer.add_image(pair.hr.astype(np.float32), name="hr", scale=(5.0, 5.0))
    form = magicgui(fit_and_enhance)  # what napari does for `autogenerate: true`
    assert {"lr", "hr", "scale", "library_size", "method"} <= {w.name for w in form}
    assert form.lr.annotation is napari.layers.Image
    data, kwargs, kind = fit_and_enhance(lr, hr, scale=2, library_size=600)
    new = viewer._add_layer_from_data(data, kwargs, kind)  # noqa: SLF001 - napari's handling of a LayerDataTuple
    assert viewer.layers["lr x2 (paired)"].data.shape == (192, 256) and new
    # the enhanced layer covers the LR layer: the same outer pixel edges (napari places pixel centres)
    def edges(layer):  # type: ignore[no-untyped-def]
        start = np.asarray(layer.translate) - np.asarray(layer.scale) / 2
        return start, start + np.asarray(layer.scale) * np.asarray(layer.data.shape)

    for got, want in zip(edges(viewer.layers["lr x2 (paired)"]), edges(lr)):
        assert got == pytest.approx(want)

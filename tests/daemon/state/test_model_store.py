"""A fitted model survives save/load unchanged, and broken state folders are refused with a clear StateError."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from refscope.daemon.errors import StateError
from refscope.daemon.state.model_store import load_model, save_model
from refscope.models.library import LibraryConfig
from refscope.models.pipeline import FitConfig, FittedModel, enhance, fit
from refscope.models.synthetic import make_pair


@pytest.fixture(scope="module")
def fitted() -> tuple[FittedModel, np.ndarray]:
    pair = make_pair(rng=np.random.default_rng(7), lr_shape=(80, 112), factor=2.0)
    config = FitConfig(scale=2, library=LibraryConfig(patch_size=9, size=600))
    return fit(pair.lr, [(pair.hr, 2.0)], config=config), pair.lr


def test_round_trip_gives_identical_model_and_output(tmp_path: Path, fitted) -> None:
    model, lr = fitted
    save_model(tmp_path / "state", model, sources=["lr.tif", "hr.tif"])
    loaded = load_model(tmp_path / "state")
    for key, value in model.library.to_arrays().items():
        np.testing.assert_array_equal(loaded.library.to_arrays()[key], value)
    assert loaded.library.config == model.library.config
    assert (loaded.scale, loaded.intensity, loaded.noise_sigma, loaded.paired) == (
        model.scale, model.intensity, model.noise_sigma, model.paired)
    assert loaded.geometries == model.geometries
    assert model.forward is not None and model.forward.pixels > 0  # fitted with the library (data consistency)
    np.testing.assert_array_equal(loaded.forward.kernel, model.forward.kernel)
    assert (loaded.forward.scale, loaded.forward.radius, loaded.forward.offset, loaded.forward.pixels) == (
        model.forward.scale, model.forward.radius, model.forward.offset, model.forward.pixels)
    for method in ("paired", "paired-faithful", "original", "bicubic"):
        np.testing.assert_array_equal(enhance(lr, loaded, method=method), enhance(lr, model, method=method))
    manifest = json.loads((tmp_path / "state" / "library.json").read_text())["manifest"]
    assert manifest["kind"] == "paired-library" and manifest["format"] == 1
    assert manifest["sources"] == ["lr.tif", "hr.tif"] and manifest["library_size"] == len(model.library)


def test_nan_geometry_score_is_stored_as_null(tmp_path: Path, fitted) -> None:
    model, _ = fitted
    geometry = type(model.geometries[0])((1.0, 2.0), (2.0, 2.0), 0.0)  # score unknown: NaN
    odd = FittedModel(model.library, model.intensity, model.scale, model.noise_sigma, model.paired, [geometry])
    save_model(tmp_path, odd, sources=[])
    assert np.isnan(load_model(tmp_path).geometries[0].score)
    assert load_model(tmp_path).forward is None  # a model without a forward model (saved before it existed)


def test_missing_folder_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no such state folder"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(StateError, match="holds no fitted model"):
        load_model(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateError, match="not a state folder"):
        load_model(tmp_path / "file")
    with pytest.raises(StateError, match="not a folder"):
        save_model(tmp_path / "file", None, sources=[])  # type: ignore[arg-type]


def test_corrupt_library_is_refused(tmp_path: Path, fitted) -> None:
    save_model(tmp_path, fitted[0], sources=[])
    npz = tmp_path / "library.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(StateError, match="checksum mismatch"):
        load_model(tmp_path)


def test_foreign_or_incomplete_manifest_is_refused(tmp_path: Path, fitted) -> None:
    save_model(tmp_path, fitted[0], sources=[])
    path = tmp_path / "library.json"
    document = json.loads(path.read_text())
    document["manifest"]["kind"] = "something-else"
    path.write_text(json.dumps(document))
    with pytest.raises(StateError, match="not a 'paired-library' model"):
        load_model(tmp_path)
    document["manifest"]["kind"] = "paired-library"
    del document["manifest"]["intensity"]
    path.write_text(json.dumps(document))
    with pytest.raises(StateError, match=r"library.json: is not a valid model \(missing entry 'intensity'\)"):
        load_model(tmp_path)


def test_the_served_safe_baseline_is_kept_for_its_scale_and_a_damaged_record_is_named(tmp_path) -> None:
    from refscope.daemon.state.model_store import (SERVED_BASELINE_FILE, load_served_baseline,
                                                   save_served_baseline)
    from refscope.models.baseline import SafeBaseline

    state = tmp_path / "state"
    assert load_served_baseline(state, 2) is None  # nothing recorded: bicubic
    baseline = SafeBaseline(1.25, 0.31, 7.5)
    save_served_baseline(state, baseline, scale=2, source="ref_000.tif")
    assert load_served_baseline(state, 2) == baseline
    assert load_served_baseline(state, 4) is None  # its σ is in x2 output px: not for another scale
    assert [p.name for p in state.iterdir()] == [SERVED_BASELINE_FILE]  # written atomically: no temporary left
    (state / SERVED_BASELINE_FILE).write_text('{"kind": "served-baseline", "scale": 2, "safe": {"sigma_px": -1}}')
    with pytest.raises(StateError, match=f"{SERVED_BASELINE_FILE}.*not a served safe baseline"):
        load_served_baseline(state, 2)
    (state / SERVED_BASELINE_FILE).write_text("{trunc")
    with pytest.raises(StateError, match=f"{SERVED_BASELINE_FILE}.*cannot be read"):
        load_served_baseline(state, 2)

"""Exported paired models are cached in the state folder: the same model is exported once, a changed one again,
and the cached model serves exactly what a fresh export serves (issue 15, item 5: cold start)."""
from __future__ import annotations

import numpy as np
import pytest

import refscope.models.paired_net as paired_net
from refscope.daemon.config import ModelConfig, ServeConfig
from refscope.daemon.serve.onnx_cache import CACHE_DIR, MAX_ENTRIES, cached_export
from refscope.daemon.serve.engine import ServingEngine
from refscope.models.library import LibraryConfig
from refscope.models.pipeline import FitConfig, fit
from refscope.models.synthetic import make_pair


@pytest.fixture(scope="module")
def model():
    pair = make_pair(rng=np.random.default_rng(9), lr_shape=(64, 72), factor=2.0)
    return fit(pair.lr, [(pair.hr, 2.0)], config=FitConfig(scale=2, library=LibraryConfig(size=600, oversample=3))), pair.lr


def _engine(folder, sigma_n=None) -> ServingEngine:
    return ServingEngine(ModelConfig(scale=2, method="paired", sigma_n=sigma_n), ServeConfig(), onnx_cache_dir=folder)


def test_a_model_is_exported_once_and_served_the_same_from_the_cache(model, tmp_path, monkeypatch):
    fitted, lr = model
    calls = []
    real = paired_net.export_paired_model

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs.get("version"))
        return real(*args, **kwargs)

    monkeypatch.setattr(paired_net, "export_paired_model", counting)
    first = _engine(tmp_path)
    first.set_model(fitted, 1)
    fresh = first.enhance(lr).image
    assert calls == ["1"] and len(list((tmp_path / CACHE_DIR).glob("*.onnx"))) == 1

    again = _engine(tmp_path)  # the next `refscope enhance`, or a restarted daemon
    again.set_model(fitted, 1)
    assert calls == ["1"]  # not exported again
    np.testing.assert_array_equal(again.enhance(lr).image, fresh)
    assert again.describe()["backend"] == "onnx"

    _engine(tmp_path, sigma_n=2.0).set_model(fitted, 1)  # another filtering strength: another export
    _engine(tmp_path).set_model(fitted, 2)  # another version (written into the manifest)
    assert calls == ["1", "1", "2"]


def test_an_unreadable_entry_is_exported_again_and_the_cache_is_bounded(model, tmp_path):
    fitted, _ = model
    exports = []

    def export():  # type: ignore[no-untyped-def]
        exports.append(1)
        return paired_net.export_paired_model(fitted, version="1")

    data, manifest = cached_export(tmp_path, fitted, "1", export)
    (entry,) = (tmp_path / CACHE_DIR).glob("*.json")
    entry.write_text("{not json")
    again, _ = cached_export(tmp_path, fitted, "1", export)
    assert len(exports) == 2 and again == data
    for version in range(MAX_ENTRIES + 3):
        cached_export(tmp_path, fitted, str(100 + version), lambda: (data, manifest))
    assert len(list((tmp_path / CACHE_DIR).glob("*.onnx"))) == MAX_ENTRIES


def test_only_checked_models_enter_the_cache_and_a_cache_hit_does_not_import_onnx(model, tmp_path):
    """A cache hit skips the static ONNX checks (and the ~0.5 s import of the onnx package, issue 15.5) because
    every entry passed them when it was stored; a model that fails them is never stored."""
    import subprocess
    import sys

    from refscope.daemon.serve.runtime import check_model_bytes

    fitted, _ = model
    data, manifest = paired_net.export_paired_model(fitted, version="1")
    with pytest.raises(Exception, match="scale"):
        cached_export(tmp_path, fitted, "1", lambda: (data, manifest.__class__.from_dict(
            {**manifest.to_dict(), "scale": 3})), check=check_model_bytes)
    assert not list((tmp_path / CACHE_DIR).glob("*.onnx"))  # refused: not cached
    _engine(tmp_path).set_model(fitted, 1)  # exported, checked, cached
    assert len(list((tmp_path / CACHE_DIR).glob("*.onnx"))) == 1
    import pickle

    (tmp_path / "model.pkl").write_bytes(pickle.dumps(fitted))
    code = ("import pickle, sys\n"
            "from refscope.daemon.config import ModelConfig, ServeConfig\n"
            "from refscope.daemon.serve.engine import ServingEngine\n"
            f"fitted = pickle.loads(open({str(tmp_path / 'model.pkl')!r}, 'rb').read())\n"
            "engine = ServingEngine(ModelConfig(scale=2, method='paired'), ServeConfig(), "
            f"onnx_cache_dir={str(tmp_path)!r})\n"
            "engine.set_model(fitted, 1)\n"
            "assert engine.describe()['backend'] == 'onnx', engine.describe()\n"
            "print('onnx' in sys.modules, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]

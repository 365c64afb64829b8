"""Paired models exported in a helper process: same model as in-process, the daemon's process never loads PyTorch,
a failing export leaves the NumPy reference serving."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from refscope.daemon.serve.runtime import OnnxModel, RuntimeConfig
from refscope.daemon.serve.export import ExportError, export_paired_in_child
from refscope.models.library import LibraryConfig
from refscope.models.pipeline import FitConfig, enhance, fit
from refscope.models.synthetic import make_pair

CPU = RuntimeConfig(providers=("CPUExecutionProvider",))


@pytest.fixture(scope="module")
def model():
    pair = make_pair(rng=np.random.default_rng(8), lr_shape=(64, 72), factor=2.0)
    fitted = fit(pair.lr, [(pair.hr, 2.0)], config=FitConfig(scale=2, library=LibraryConfig(size=600, oversample=3)))
    fitted.regressors  # noqa: B018
    return fitted, pair.lr


def test_the_child_exports_the_model_the_oracle_computes(model):
    fitted, lr = model
    data, manifest = export_paired_in_child(fitted, version="7")
    assert manifest.version == "7" and manifest.scale == 2 and manifest.workspace_bytes_per_px > 0
    served = OnnxModel(data, manifest, CPU).run(lr.astype(np.float32))
    oracle = enhance(lr, fitted, method="paired")
    assert np.max(np.abs(served - oracle)) <= 1e-4 * float(np.ptp(oracle))


def test_a_failing_export_is_an_export_error(model):
    fitted, _ = model
    with pytest.raises(ExportError, match="failed"):
        export_paired_in_child("not a model", version="1")
    with pytest.raises(ExportError, match="took more than"):
        export_paired_in_child(fitted, version="1", timeout_s=0.01)


def test_a_daemon_engine_serves_without_loading_pytorch():
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from refscope.daemon.config import ModelConfig, ServeConfig
        from refscope.daemon.serve.engine import ServingEngine
        from refscope.models.library import LibraryConfig
        from refscope.models.pipeline import FitConfig, fit
        from refscope.models.synthetic import make_pair
        pair = make_pair(rng=np.random.default_rng(8), lr_shape=(64, 72), factor=2.0)
        fitted = fit(pair.lr, [(pair.hr, 2.0)], config=FitConfig(scale=2, library=LibraryConfig(size=600, oversample=3)))
        engine = ServingEngine(ModelConfig(scale=2), ServeConfig(), export_in_child=True)
        engine.enhance(pair.lr)
        engine.set_model(fitted, 1)
        result = engine.enhance(pair.lr)
        print(result.backend, result.version, "torch" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["onnx", "1", "False"]

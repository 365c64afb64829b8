"""PairedLibraryNet / export_paired_model against the NumPy oracle :func:`refscope.models.nlm.reconstruct_paired`.

Every check compares with the NumPy implementation (or ``pipeline.enhance``, which calls it): the torch module in
float64 (to rounding) and float32 (1e-4 of the image range), the ONNX export served by
:class:`refscope.daemon.serve.runtime.OnnxModel` in LR units, dynamic H/W through one session, and tiled serving.
"""
from __future__ import annotations

import dataclasses

import math

import numpy as np
import pytest
import torch

from refscope.daemon.serve.runtime import OnnxModel, RuntimeConfig
from refscope.models import synthetic as syn
from refscope.models.image_ops import upsample_bicubic
from refscope.models.library import LibraryConfig
from refscope.models.nlm import PairedConfig, PairedRegressors, reconstruct_paired
from refscope.models.onnx_export import check_onnx_model
from refscope.models.paired_net import PAIRED_KIND, PairedLibraryNet, export_paired_model, receptive_radius
from refscope.models.pipeline import FitConfig, enhance, fit
from refscope.models.tiling import process_tiled

REL = 1e-4  # tolerance relative to the reference image's range


def _fit(scale: int):
    pair = syn.make_pair(rng=np.random.default_rng(10 + scale), lr_shape=(96, 112), factor=float(scale), noise="low")
    # S=3 keeps a query stride of 2 (not the default S) so that the aligned-window path stays tested
    config = FitConfig(scale=scale, library=LibraryConfig(patch_size=4 * scale + 1, n_categories=6, oversample=5,
                                                          size=600, seed=0),
                       paired=PairedConfig(stride=2 if scale == 3 else None))
    return pair, fit(pair.lr, [(pair.hr, float(scale))], config=config)


@pytest.fixture(scope="module")
def fitted():
    """{S: (SyntheticPair, FittedModel)} for S = 2 (n = 9) and S = 3 (n = 13)."""
    return {scale: _fit(scale) for scale in (2, 3)}


@pytest.fixture(scope="module")
def served(fitted):
    """{S: (bytes, manifest, OnnxModel on the CPU provider)}."""
    out = {}
    for scale, (_, model) in fitted.items():
        model_bytes, manifest = export_paired_model(model)
        out[scale] = (model_bytes, manifest, OnnxModel(model_bytes, manifest,
                                                       RuntimeConfig(providers=("CPUExecutionProvider",))))
    return out


def _units(model, lr: np.ndarray) -> np.ndarray:
    """LR crop in library units, rounded through float32 so torch and NumPy see the same input."""
    return model.intensity.to_units(lr).astype(np.float32).astype(np.float64)


def _run(net: PairedLibraryNet, image: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    with torch.no_grad():
        return net(torch.as_tensor(image, dtype=dtype)[None, None])[0, 0].double().numpy()


def _oracle(model, units: np.ndarray, config: PairedConfig | None = None, regressors=None) -> np.ndarray:
    return reconstruct_paired(units, model.library, scale=model.scale, config=config or model.paired,
                              noise_sigma=model.noise_sigma, regressors=regressors or model.regressors)


def _assert_close(actual: np.ndarray, reference: np.ndarray, rel: float) -> None:
    assert actual.shape == reference.shape
    span = float(reference.max() - reference.min())
    err = float(np.max(np.abs(actual - reference)))
    assert err <= rel * span, f"max |diff| {err:.3g} > {rel:g} x range {span:.3g}"


# ------------------------------------------------------------------------------------------------ upsampling
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("shape", [(13, 8), (9, 16)])
def test_upsample_equals_keys_bicubic(fitted, scale, shape):
    _, model = fitted[2]
    net = PairedLibraryNet(model.regressors, patch_size=9, scale=scale, config=model.paired,
                           noise_sigma=model.noise_sigma, dtype=torch.float64)
    image = np.random.default_rng(scale).uniform(0, 255, shape)
    with torch.no_grad():
        up = net.upsample(torch.as_tensor(image)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(up, upsample_bicubic(image, scale), rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------------ torch vs oracle
@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("shape", [(24, 31), (17, 20)])
def test_module_equals_reconstruct_paired(fitted, scale, shape):
    pair, model = fitted[scale]
    units = _units(model, pair.lr[3:3 + shape[0], 7:7 + shape[1]])
    reference = _oracle(model, units)
    _assert_close(_run(PairedLibraryNet.from_fitted(model, dtype=torch.float64), units, torch.float64), reference,
                  1e-10)
    _assert_close(_run(PairedLibraryNet.from_fitted(model), units, torch.float32), reference, REL)


@pytest.mark.parametrize("changes", [dict(stride=1), dict(stride=3), dict(stride=5), dict(stride=7),
                                     dict(n_probe=1), dict(n_probe=3, sigma_n=0.3), dict(n_probe=50)])
def test_other_configs_equal_the_oracle(fitted, changes):
    """Strides with and without an extra last row/column, strides wider than n//2 + 1, n_probe >= k."""
    pair, model = fitted[2]
    config = dataclasses.replace(model.paired, **changes)
    units = _units(model, pair.lr[:19, :26])
    net = PairedLibraryNet(model.regressors, patch_size=9, scale=2, config=config, noise_sigma=model.noise_sigma,
                           dtype=torch.float64)
    _assert_close(_run(net, units, torch.float64), _oracle(model, units, config), 1e-10)


def test_empty_categories_are_never_blended(fitted):
    pair, model = fitted[2]
    reg = model.regressors
    centroids = reg.centroids.copy()
    centroids[[0, 3]] = np.inf  # what fit_paired_regressors stores for categories without members
    regressors = PairedRegressors(reg.basis, reg.feature_mean, centroids, reg.weights)
    config = dataclasses.replace(model.paired, n_probe=3)
    units = _units(model, pair.lr[:21, :18])
    net = PairedLibraryNet(regressors, patch_size=9, scale=2, config=config, noise_sigma=model.noise_sigma,
                           dtype=torch.float64)
    assert net.n_categories == len(centroids) - 2
    _assert_close(_run(net, units, torch.float64), _oracle(model, units, config, regressors), 1e-10)


def test_batches_are_independent_images(fitted):
    pair, model = fitted[2]
    net = PairedLibraryNet.from_fitted(model)
    a, b = _units(model, pair.lr[:16, :20]), _units(model, pair.lr[40:56, 50:70])
    with torch.no_grad():
        both = net(torch.as_tensor(np.stack([a, b])[:, None], dtype=torch.float32)).numpy()
    _assert_close(both[0, 0], _run(net, a, torch.float32), 1e-6)
    _assert_close(both[1, 0], _run(net, b, torch.float32), 1e-6)


def test_rejects_mismatched_regressors(fitted):
    _, model = fitted[2]
    with pytest.raises(ValueError, match="patch size"):
        PairedLibraryNet(model.regressors, patch_size=7, scale=2, config=model.paired, noise_sigma=1.0)
    reg = model.regressors
    empty = PairedRegressors(reg.basis, reg.feature_mean, np.full_like(reg.centroids, np.inf), reg.weights)
    with pytest.raises(ValueError, match="empty"):
        PairedLibraryNet(empty, patch_size=9, scale=2, config=model.paired, noise_sigma=1.0)


# ----------------------------------------------------------------------------------------- ONNX + runtime
@pytest.mark.parametrize("scale", [2, 3])
def test_export_manifest_and_served_output_equal_enhance(fitted, served, scale):
    pair, model = fitted[scale]
    model_bytes, manifest, session = served[scale]
    check_onnx_model(model_bytes, expected_scale=scale)
    assert manifest.kind == PAIRED_KIND and manifest.scale == scale and manifest.opset == 17
    assert manifest.library_size == len(model.library)
    assert (manifest.halo, manifest.align) == model.tiling("paired")  # the exact tiling travels with the model
    np.testing.assert_allclose(manifest.normalise(np.array([model.intensity.low, model.intensity.high])),
                               [0.0, 255.0], atol=1e-3)
    # two frame sizes (one odd) through the same session: dynamic H and W, outputs in LR units
    for crop in ((slice(0, 40), slice(0, 52)), (slice(11, 64), slice(5, 42))):
        lr = pair.lr[crop]
        _assert_close(session.run(lr).astype(np.float64), enhance(lr, model, method="paired"), REL)


def test_tiled_serving_equals_untiled(fitted, served):
    pair, model = fitted[2]
    _, _, session = served[2]
    halo = receptive_radius(2, model.library.patch_size, model.paired.query_stride(2))
    lr = pair.lr[:70, :83]
    whole = session.run(lr)
    _assert_close(session.run(lr, tile=24, halo=halo), whole, REL)
    # the torch module through process_tiled too (windows start at every offset the plan makes)
    net = PairedLibraryNet.from_fitted(model)
    units = _units(model, lr)
    _assert_close(process_tiled(units, lambda w: _run(net, w, torch.float32), scale=2, tile=30, halo=halo),
                  _oracle(model, units), REL)


def test_tiled_serving_at_scale_3_needs_aligned_windows(fitted, served):
    """S=3, stride 2: the query grid is anchored at the window origin, so windows must start at even LR px."""
    pair, model = fitted[3]
    _, _, session = served[3]
    stride = model.paired.query_stride(3)
    halo, align = model.tiling("paired")
    assert align == 2 == stride // math.gcd(3, stride)
    assert halo == receptive_radius(3, model.library.patch_size, stride)
    lr = pair.lr[:61, :75]
    whole = session.run(lr)
    _assert_close(session.run(lr, tile=13, halo=halo, align=align), whole, REL)
    misaligned = session.run(lr, tile=13, halo=halo)
    assert np.max(np.abs(misaligned - whole)) > REL * float(np.ptp(whole))

"""Geometric self-ensemble (:mod:`refscope.models.self_ensemble`): exact transforms, averaging that cancels what is
not equivariant, tiling that stays exact, and the size that fits a budget."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from refscope.models.image_ops import upsample_bicubic
from refscope.models.self_ensemble import DIHEDRAL, ENSEMBLE_SIZES, ensemble_run, ensemble_size_for
from refscope.models.tiling import process_tiled


def test_the_transforms_are_the_eight_symmetries_and_invert_exactly(rng):
    x = rng.normal(size=(2, 5, 7))
    images = set()
    for t in DIHEDRAL:
        y = t.apply(x)
        np.testing.assert_array_equal(t.invert(y), x)
        images.add(y.tobytes() + bytes(y.shape))
    assert len(images) == 8  # all distinct


@pytest.mark.parametrize("n", ENSEMBLE_SIZES)
def test_every_prefix_is_a_group(n):
    x = np.arange(36.0).reshape(6, 6)
    members = {t.apply(x).tobytes() for t in DIHEDRAL[:n]}
    for a, b in itertools.product(DIHEDRAL[:n], repeat=2):
        assert a.apply(b.apply(x)).tobytes() in members
    if n <= 4:
        assert not any(t.transpose for t in DIHEDRAL[:n])


def test_an_equivariant_model_gives_back_its_own_output(rng):
    x = rng.normal(size=(12, 16))
    plain = upsample_bicubic(x, 2)
    for n in ENSEMBLE_SIZES:
        np.testing.assert_allclose(ensemble_run(lambda a: upsample_bicubic(a, 2), x, n), plain, atol=1e-12)


def test_averaging_cancels_a_directional_bias(rng):
    """A model with a bias along +x (output = input + its forward difference in x) is not flip-equivariant; the
    flips in the ensemble turn the bias around and the average of 4 keeps the symmetric part only."""
    x = rng.normal(size=(10, 10))

    def biased(a: np.ndarray) -> np.ndarray:
        d = np.zeros_like(a)
        d[:, :-1] = a[:, 1:] - a[:, :-1]
        return a + d

    single = biased(x)
    averaged = ensemble_run(biased, x, 4)
    interior = (slice(None), slice(1, -1))
    central = x.copy()
    central[:, 1:-1] = x[:, 1:-1] + 0.5 * (x[:, 2:] - 2 * x[:, 1:-1] + x[:, :-2])
    np.testing.assert_allclose(averaged[interior], central[interior], atol=1e-12)
    assert not np.allclose(single[interior], central[interior])


def _stride2(a: np.ndarray) -> np.ndarray:
    """A model anchored on a stride-2 grid of its input: keeps every second sample, repeats it, upsamples x2."""
    kept = a[..., ::2, ::2]
    up = np.repeat(np.repeat(kept, 2, axis=-2), 2, axis=-1)[..., : a.shape[-2], : a.shape[-1]]
    return upsample_bicubic(up, 2)


@pytest.mark.parametrize("shape", [(100, 130), (61, 75)])
def test_tiled_ensemble_equals_the_whole_frame_for_a_model_anchored_on_a_stride_2_grid(rng, shape):
    """Windows cut at even positions give the whole frame's pixels for every ensemble size, through the tiler
    and for a window of odd size cut by hand (without the padding to ``align`` that window, flipped, would be
    anchored on the other phase than the flipped frame: the control at the end)."""
    x = rng.normal(size=shape)
    for n in ENSEMBLE_SIZES:
        whole = ensemble_run(_stride2, x, n, align=2)
        tiled = process_tiled(x, lambda w: ensemble_run(_stride2, w, n, align=2), scale=2, tile=24, halo=8, align=2)
        np.testing.assert_allclose(tiled, whole, atol=1e-5, err_msg=f"n={n}")  # process_tiled works in float32
    window = x[:41, :41]  # starts at 0, ends at an odd position: the frame's far ends are even (shape0) or odd
    core = (slice(0, 2 * 30), slice(0, 2 * 30))  # far enough from the window's far edges (the model's reach)
    for n in ENSEMBLE_SIZES:
        np.testing.assert_allclose(ensemble_run(_stride2, window, n, align=2)[core],
                                   ensemble_run(_stride2, x, n, align=2)[core], atol=1e-12)
    if shape[0] % 2 == 0:
        assert np.abs(ensemble_run(_stride2, window, 2)[core] - ensemble_run(_stride2, x, 2)[core]).max() > 0.1


def test_size_for_a_budget():
    assert ensemble_size_for(0.094, 0.5) == 4
    assert ensemble_size_for(0.045, 0.5) == 8
    assert ensemble_size_for(0.3, 0.5) == 1
    assert ensemble_size_for(0.2, 0.5) == 2
    assert ensemble_size_for(0.01, 0.5, max_n=2) == 2
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="pass_s"):
            ensemble_size_for(bad, 0.5)
    with pytest.raises(ValueError, match="max_n"):
        ensemble_size_for(0.1, 0.5, max_n=3)
    with pytest.raises(ValueError, match="ensemble size"):
        ensemble_run(lambda a: a, np.zeros((4, 4)), 3)

"""The STEM scan generator (models/simulator.py): an atomic lattice, point sampling (not pixel averaging), Poisson
dose, line jitter and scan noise -- each against a known answer."""
from __future__ import annotations

import numpy as np
import pytest

from refscope.models.simulator import StemOptics, scan_stem, stem_lattice, stem_pair

OPTICS = StemOptics(lr_shape=(96, 96))


@pytest.fixture(scope="module")
def lattice() -> np.ndarray:
    return stem_lattice((6.0, 6.0), OPTICS, rng=np.random.default_rng(0), rotation_deg=0.0, vacancy_fraction=0.0)


def test_the_lattice_period_is_the_strongest_frequency_of_a_noise_free_scan(lattice: np.ndarray) -> None:
    image = scan_stem(lattice, OPTICS, centre_nm=(3.0, 3.0), shape=(96, 96), pixel_nm=0.05, dose=None, rng=None,
                      jitter=False, scan_noise=False)
    profile = np.abs(np.fft.rfft(image.mean(axis=0) - image.mean()))
    period_px = 96 / int(np.argmax(profile[2:]) + 2)
    assert period_px == pytest.approx(OPTICS.lattice_nm / 0.05, rel=0.1)  # 7.8 px per 0.3905 nm


def test_lr_is_point_sampled_not_pixel_averaged(lattice: np.ndarray) -> None:
    """Noise-free, an LR pixel centre IS an HR pixel centre (odd factor 3): point sampling gives exactly that HR
    value; averaging the 3x3 HR block would not."""
    kwargs = dict(centre_nm=(3.0, 3.0), dose=None, rng=None, jitter=False, scan_noise=False)
    lr = scan_stem(lattice, OPTICS, shape=(32, 32), pixel_nm=0.06, **kwargs)
    hr = scan_stem(lattice, OPTICS, shape=(96, 96), pixel_nm=0.02, **kwargs)
    np.testing.assert_allclose(lr, hr[1::3, 1::3], atol=1e-9)
    averaged = hr.reshape(32, 3, 32, 3).mean(axis=(1, 3))
    assert np.abs(lr - averaged).max() > 0.02


def test_counts_are_poisson_in_the_dose(lattice: np.ndarray) -> None:
    flat = np.full((64, 64), 0.5)
    optics = StemOptics(specimen_nm=0.05, probe_sigma_nm=0.0)
    image = scan_stem(flat, optics, centre_nm=(1.6, 1.6), shape=(60, 60), pixel_nm=0.05, dose=40.0,
                      rng=np.random.default_rng(1), jitter=False, scan_noise=False)
    assert image.mean() == pytest.approx(0.5, rel=0.02)
    assert (image * 40.0).var() == pytest.approx(0.5 * 40.0, rel=0.1)  # variance of counts = mean of counts


def test_scan_noise_and_jitter_change_whole_lines(lattice: np.ndarray) -> None:
    kwargs = dict(centre_nm=(3.0, 3.0), shape=(96, 96), pixel_nm=0.05, dose=None)
    clean = scan_stem(lattice, OPTICS, rng=None, jitter=False, scan_noise=False, **kwargs)
    lines = scan_stem(lattice, OPTICS, rng=np.random.default_rng(2), jitter=False, **kwargs)
    ratio = lines.mean(axis=1) / clean.mean(axis=1)
    assert ratio.std() > 0.5 * OPTICS.scan_noise  # each line its own gain
    jittered = scan_stem(lattice, OPTICS, rng=np.random.default_rng(3), scan_noise=False, **kwargs)
    assert not np.allclose(jittered, clean) and np.allclose(jittered.mean(), clean.mean(), rtol=0.02)


def test_stem_pair_gives_an_lr_frame_and_a_finer_reference_of_its_centre() -> None:
    lr, hr, lr_nm, hr_nm = stem_pair(OPTICS, rng=np.random.default_rng(4))
    assert lr.shape == (96, 96) and hr.shape == (96, 96) and lr.dtype == hr.dtype == np.uint16
    assert lr_nm / hr_nm == OPTICS.hr_factor and lr.std() > 0 and hr.std() > 0

"""The pretrained prior (models/prior.py) and checkpoint choice on a validation strip (fit_network)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from refscope.models.net_fit import fit_network, net_predictor
from refscope.models.pipeline import FitConfig, register_reference, training_grids
from refscope.models.prior import (IDENTITY, PriorConfig, PriorPair, frame_normalisation, prior_regions,
                                  train_prior)
from refscope.models.promotion import held_out_delta_psnr, split_for_validation
from refscope.models.synthetic import make_pair

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair(seed: int) -> PriorPair:
    p = make_pair(rng=np.random.default_rng(seed), lr_shape=(112, 144), factor=2.0, hr_fraction=0.5, noise="high")
    geometry = register_reference(p.lr, p.hr, factor=2.0, config=FitConfig(scale=2))
    box, hr_grid = training_grids(p.lr, p.hr, geometry, scale=2)
    (y0, y1), (x0, x1) = box
    return PriorPair(p.lr, p.lr[y0:y1, x0:x1], hr_grid, f"synthetic{seed}")


@pytest.fixture(scope="module")
def pairs() -> list[PriorPair]:
    return [_pair(seed) for seed in (11, 12, 13, 14)]


@pytest.fixture(scope="module")
def prior(pairs) -> object:
    return train_prior(pairs[:3], scale=2, config=PriorConfig(budget_s=6.0, batch=8, patch=24, validate_every=0))


def _held_out(pair: PriorPair):
    return split_for_validation(pair.lr_region, pair.hr_grid, scale=2).held_out


def test_prior_generalises_to_a_pair_it_never_saw(prior, pairs) -> None:
    unseen = pairs[3]
    assert prior.normalisation == IDENTITY and prior.history[0]["strategy"] == "prior"
    assert prior.history[0]["pairs"] == ["synthetic11", "synthetic12", "synthetic13"]
    applied = replace(prior, normalisation=frame_normalisation(unseen.lr_frame))
    gain = held_out_delta_psnr(net_predictor(applied), _held_out(unseen), scale=2)
    assert gain > 0.3, f"a prior from three other pairs should beat bicubic on a fourth, got {gain:+.2f} dB"


def test_prior_is_applied_in_each_frame_own_units(prior, pairs) -> None:
    """A frame 40x brighter plus an offset (another detector gain, 16-bit) gives the same image, scaled alike."""
    frame = pairs[3].lr_frame
    brighter = 40.0 * frame + 1000.0
    out = net_predictor(replace(prior, normalisation=frame_normalisation(frame)))(frame[:32, :40])
    out_b = net_predictor(replace(prior, normalisation=frame_normalisation(brighter)))(brighter[:32, :40])
    np.testing.assert_allclose(out_b, 40.0 * out + 1000.0, rtol=1e-4, atol=1e-3 * np.ptp(brighter))


def test_fine_tune_from_prior_keeps_the_best_validation_checkpoint(prior, pairs) -> None:
    """A learning rate that wrecks the network: the validation strip keeps the prior's weights instead."""
    pair = pairs[3]
    split = split_for_validation(pair.lr_region, pair.hr_grid, scale=2)
    norm = frame_normalisation(pair.lr_frame)
    kwargs = dict(scale=2, budget_s=1.5, bootstrap_fraction=0.0, init=prior, normalisation=norm, lr=0.5, seed=2)
    wrecked = fit_network([split.train[0]], [split.train], **kwargs)
    kept = fit_network([split.train[0]], [split.train], validation=split.held_out, validate_every=5, **kwargs)
    assert kept.normalisation == norm and wrecked.normalisation == norm
    score = lambda fit: held_out_delta_psnr(net_predictor(fit), split.held_out, scale=2)  # noqa: E731
    prior_score = score(replace(prior, normalisation=norm))
    record = kept.history[-1]
    assert record["best_validation_d_psnr_db"] == pytest.approx(score(kept), abs=1e-6)
    assert score(kept) >= prior_score - 1e-6 > score(wrecked) + 0.5
    assert 0 <= record["best_step"] <= record["steps"]


def test_prior_keeps_its_best_checkpoint_on_the_held_out_strips(pairs) -> None:
    """The weights handed back are the best of every measurement on the pairs' held-out strips, not the last."""
    kept = train_prior(pairs[:2], scale=2, config=PriorConfig(budget_s=2.0, batch=8, patch=24, validate_every=5))
    held_out = [sub for lr, hr in prior_regions(pairs[:2], 2)
                for sub in split_for_validation(lr, hr, scale=2).held_out]
    record = kept.history[0]
    steps, scores = zip(*record["validation_curve"])
    assert steps[0] == 0 and steps[-1] == record["steps"] and len(steps) >= 3
    assert record["best_validation_d_psnr_db"] == pytest.approx(max(scores), abs=1e-4)
    assert record["best_step"] == steps[int(np.argmax(scores))]
    # the weights really are that checkpoint's: re-measured on the same strips
    assert held_out_delta_psnr(net_predictor(kept), tuple(held_out), scale=2) == pytest.approx(
        record["best_validation_d_psnr_db"], abs=1e-6)
    whole = train_prior(pairs[:2], scale=2, config=PriorConfig(budget_s=0.5, batch=8, patch=24, validate_every=0))
    assert "best_step" not in whole.history[0]
    with pytest.raises(ValueError, match="validate_every"):
        PriorConfig(validate_every=-1)


def test_prior_refuses_bad_input(pairs) -> None:
    with pytest.raises(ValueError, match="at least one"):
        train_prior([], scale=2)
    bad = replace(pairs[0], hr_grid=pairs[0].hr_grid[:-2])
    with pytest.raises(ValueError, match="synthetic11.*must be 2 x"):
        train_prior([bad], scale=2, config=PriorConfig(budget_s=0.1))
    with pytest.raises(ValueError, match="budget_s"):
        PriorConfig(budget_s=0)


def test_a_scanned_pair_samples_the_hr_at_the_lr_pixel_centres_with_the_lr_noise_of_a_fast_scan() -> None:
    from scipy import ndimage

    from refscope.models.noise import estimate_noise_sigma
    from refscope.models.prior import ScanDegradation, scanned_pair

    y, x = np.mgrid[:240, :320].astype(float)
    hr = 1000.0 + 400.0 * np.sin(x / 23.0) * np.cos(y / 31.0)  # smooth: the probe blur barely changes it
    degradation = ScanDegradation(probe_sigma_lr_px=(0.3, 0.3), noise_rel=(0.035, 0.035), line_jitter_lr_px=0.0)
    pair = scanned_pair(hr, 4, rng=np.random.default_rng(0), degradation=degradation, name="smooth")
    assert pair.lr_region.shape == (60, 80) and pair.hr_grid.shape == (240, 320) and pair.name == "smooth"
    centres = 4 * (np.mgrid[:60, :80] + 0.5) - 0.5                    # LR pixel i sees HR rows 4i..4i+3
    expected = ndimage.map_coordinates(hr, centres, order=1)
    span = np.subtract(*np.percentile(hr, [99.5, 0.5]))
    residual = pair.lr_region - expected
    assert abs(residual.mean()) < 0.01 * span                       # no offset, no shift
    assert estimate_noise_sigma(pair.lr_region) / span == pytest.approx(0.035, rel=0.15)
    shifted = ndimage.map_coordinates(hr, centres + np.array([0.0, 2.0])[:, None, None], order=1)
    assert np.std(pair.lr_region - shifted) > 1.2 * np.std(residual)  # half an LR pixel off would show
    with pytest.raises(ValueError, match="too small"):
        scanned_pair(hr[:20, :20], 4, rng=np.random.default_rng(0))


def test_checkpoints_of_the_weight_average_follow_the_closed_form_average(prior, pairs) -> None:
    """``BestCheckpoint(average=d)``: after steps with weights θ_1..θ_n from θ_0, the average it scores is
    ``d^n θ_0 + Σ_k (1 - d) d^(n-k) θ_k`` (written out here), the training weights are left as they were, and
    the kept checkpoint is the average's, re-measured on the same strip."""
    import torch

    from refscope.models.net_fit import BestCheckpoint, NetFit
    from refscope.models.networks import build_network
    from refscope.models.training import warm_start

    pair = pairs[3]
    split = split_for_validation(pair.lr_region, pair.hr_grid, scale=2)
    norm = frame_normalisation(pair.lr_frame)
    net = build_network(prior.network, scale=2, **prior.network_kwargs)
    warm_start(net, prior.state_dict)
    d = 0.7
    keeper = BestCheckpoint(net, norm, split.held_out, scale=2, every=3, average=d)
    keeper.consider(0)
    rng = torch.Generator().manual_seed(0)
    seen = [{k: v.clone() for k, v in net.state_dict().items()}]
    for step in range(1, 4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=rng))
        seen.append({k: v.clone() for k, v in net.state_dict().items()})
        keeper.on_step(step, 0.0)
    n = len(seen) - 1
    for name, value in net.state_dict().items():
        if not value.is_floating_point():
            continue
        expected = d ** n * seen[0][name] + sum((1 - d) * d ** (n - k) * seen[k][name] for k in range(1, n + 1))
        torch.testing.assert_close(keeper.average[name], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(value, seen[-1][name])  # the network trains on its own weights
    # the measurement at step 3 scored the average, not the training weights; the kept weights are the best's
    measure = lambda state: held_out_delta_psnr(  # noqa: E731
        net_predictor(NetFit(prior.network, 2, {k: v.clone() for k, v in state.items()}, norm, prior.network_kwargs)),
        split.held_out, scale=2)
    assert [s for s, _ in keeper.curve] == [0, 3]
    assert keeper.curve[1][1] == pytest.approx(measure(keeper.average), abs=1e-6)
    assert abs(keeper.curve[1][1] - measure(seen[-1])) > 1e-3
    assert measure(keeper.state) == pytest.approx(keeper.score, abs=1e-6) == max(s for _, s in keeper.curve)
    with pytest.raises(ValueError, match="decay must be in"):
        BestCheckpoint(net, norm, split.held_out, scale=2, every=3, average=1.0)


def test_fine_tune_settings_replace_the_defaults(prior, pairs) -> None:
    """``fine_tune(..., average=d)`` reaches the checkpoint keeper; an unknown setting is refused by name."""
    from refscope.models.prior import fine_tune

    pair = pairs[3]
    split = split_for_validation(pair.lr_region, pair.hr_grid, scale=2)
    tuned = fine_tune(prior, [pair.lr_frame], [split.train], budget_s=0.6, validation=split.held_out, average=0.9)
    record = tuned.history[-1]
    assert record["best_validation_d_psnr_db"] == pytest.approx(
        held_out_delta_psnr(net_predictor(tuned), split.held_out, scale=2), abs=1e-6)
    with pytest.raises(TypeError, match="momentum"):
        fine_tune(prior, [pair.lr_frame], [split.train], budget_s=0.1, momentum=0.9)


def test_the_session_fine_tune_adds_the_structural_term(prior, pairs, monkeypatch) -> None:
    """The shipped fine-tune trains on L1 + 0.01 (1 - SSIM) (FINE_TUNE); ``ssim_weight=0`` is the pixel loss alone."""
    from refscope.models import training
    from refscope.models.prior import fine_tune

    calls: list[int] = []
    real = training.ssim_loss

    def counted(prediction, target, data_range=1.0):
        calls.append(int(prediction.shape[0]))
        return real(prediction, target, data_range)

    monkeypatch.setattr(training, "ssim_loss", counted)
    pair = pairs[3]
    split = split_for_validation(pair.lr_region, pair.hr_grid, scale=2)
    tuned = fine_tune(prior, [pair.lr_frame], [split.train], budget_s=0.4, validation=split.held_out)
    steps = tuned.history[-1]["steps"]
    assert steps > 0 and calls == [16] * steps            # every step, on the 16-patch batch
    calls.clear()
    fine_tune(prior, [pair.lr_frame], [split.train], budget_s=0.2, validation=split.held_out, ssim_weight=0.0)
    assert calls == []


def test_the_session_fine_tune_trains_on_l1_and_settings_may_add_a_bootstrap(prior, pairs, monkeypatch) -> None:
    """FINE_TUNE's pixel loss is L1 (the prior's own is L2); ``bootstrap_fraction`` is a setting like the others
    (an LR-only phase on the frame before the pairs), not a keyword the fine-tune refuses."""
    from refscope.models import net_fit
    from refscope.models.prior import fine_tune

    losses: list[str] = []
    real = net_fit.checkpointed_phase

    def spied(net, cfg, *args, **kwargs):
        losses.append(cfg.loss)
        return real(net, cfg, *args, **kwargs)

    monkeypatch.setattr(net_fit, "checkpointed_phase", spied)
    pair = pairs[3]
    split = split_for_validation(pair.lr_region, pair.hr_grid, scale=2)
    tuned = fine_tune(prior, [pair.lr_frame], [split.train], budget_s=0.3, validation=split.held_out)
    assert losses == ["l1"] and [h["strategy"] for h in tuned.history] == ["real-pairs"]
    boot = fine_tune(prior, [pair.lr_frame], [split.train], budget_s=0.6, validation=split.held_out,
                     bootstrap_fraction=0.5, loss="l2")
    assert losses[-1] == "l2" and [h["strategy"] for h in boot.history] == ["lr-only", "real-pairs"]
    assert boot.history[0]["steps"] > 0


def test_the_session_fine_tune_sees_the_pairs_as_scanned_and_serves_in_one_pass(prior, pairs, monkeypatch) -> None:
    """FINE_TUNE trains on the session's patches in their own orientation (no flip, no turn: a raster scan is
    not symmetric), so the tuned network allows one self-ensemble pass; the prior it starts from (trained on
    every transform) allows 8, and ``augment`` is a setting like the others."""
    from refscope.models import training
    from refscope.models.net_fit import largest_ensemble
    from refscope.models.prior import fine_tune

    seen: list[object] = []
    real = training.PatchSource.sample

    def spied(self, batch, rng, augment=True):
        seen.append(augment)
        return real(self, batch, rng, augment)

    monkeypatch.setattr(training.PatchSource, "sample", spied)
    pair = pairs[3]
    split = split_for_validation(pair.lr_region, pair.hr_grid, scale=2)
    tuned = fine_tune(prior, [pair.lr_frame], [split.train], budget_s=0.3, validation=split.held_out)
    assert seen and set(seen) == {"none"} and tuned.history[-1]["augment"] == "none"
    assert largest_ensemble(tuned) == 1 and largest_ensemble(prior) == 8
    seen.clear()
    flipped = fine_tune(prior, [pair.lr_frame], [split.train], budget_s=0.2, validation=split.held_out,
                        augment="flips")
    assert set(seen) == {"flips"} and largest_ensemble(flipped) == 4


def test_a_prior_trained_on_the_scans_own_orientation_serves_in_one_pass(pairs) -> None:
    from refscope.models.net_fit import largest_ensemble

    fit = train_prior(pairs[:2], scale=2, config=PriorConfig(budget_s=5.0, steps=6, validate_every=3,
                                                             augment="none"))
    assert fit.history[0]["augment"] == "none" and largest_ensemble(fit) == 1
    with pytest.raises(ValueError, match="augment must be"):
        PriorConfig(augment="transpose")


def test_a_prior_can_train_with_the_structural_term(pairs, monkeypatch) -> None:
    """``PriorConfig.ssim_weight`` reaches the prior's training steps (``train_prior.py --ssim-weight``)."""
    from refscope.models import training

    calls: list[int] = []
    real = training.ssim_loss
    monkeypatch.setattr(training, "ssim_loss", lambda p, t, data_range=1.0: calls.append(1) or real(p, t, data_range))
    fit = train_prior(pairs[:2], scale=2, config=PriorConfig(budget_s=0.3, batch=4, patch=12, validate_every=0,
                                                             ssim_weight=0.01))
    assert len(calls) == fit.history[0]["steps"] > 0
    calls.clear()
    train_prior(pairs[:2], scale=2, config=PriorConfig(budget_s=0.2, batch=4, patch=12, validate_every=0))
    assert calls == []


def test_a_step_scheduled_prior_takes_its_steps_with_the_lower_rate_for_the_last_quarter(pairs, monkeypatch) -> None:
    """``PriorConfig.steps``: exactly N Adam steps, the last quarter of them at a quarter of the rate, whatever the
    clock says; ``budget_s`` only caps it (and the history says when it did)."""
    import torch

    rates: list[float] = []
    real_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    fit = train_prior(pairs[:2], scale=2, config=PriorConfig(budget_s=600.0, steps=40, batch=4, patch=12, lr=1e-3,
                                                             validate_every=0))
    record = fit.history[0]
    assert record["steps"] == 40 and record["cut_by_budget"] is False and record["schedule"] == {"steps": 40}
    assert rates == [1e-3] * 30 + [2.5e-4] * 10
    rates.clear()
    cut = train_prior(pairs[:2], scale=2, config=PriorConfig(budget_s=0.3, steps=10 ** 6, batch=4, patch=12,
                                                             validate_every=0))
    assert 0 < cut.history[0]["steps"] < 10 ** 6 and cut.history[0]["cut_by_budget"] is True
    assert set(rates) == {1e-3}, "a capped run never reached its last quarter"
    with pytest.raises(ValueError, match="steps"):
        PriorConfig(steps=-1)


def test_a_step_scheduled_prior_is_the_same_prior_however_fast_the_machine(pairs, monkeypatch) -> None:
    """The same seed and step count give the same weights whether the steps take 0 s or a slow machine's time:
    the reason the recipe counts steps (a time schedule on a GPU took 4x the steps and kept a worse checkpoint)."""
    import time as time_module

    import torch

    config = PriorConfig(budget_s=600.0, steps=24, batch=4, patch=12, validate_every=8)
    fast = train_prior(pairs[:2], scale=2, config=config)
    real_step = torch.optim.Adam.step

    def slow(self, *args, **kwargs):
        time_module.sleep(0.01)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", slow)
    slowed = train_prior(pairs[:2], scale=2, config=config)
    assert fast.history[0]["steps"] == slowed.history[0]["steps"] == 24
    assert fast.history[0]["best_step"] == slowed.history[0]["best_step"]
    for key, value in fast.state_dict.items():
        torch.testing.assert_close(slowed.state_dict[key], value, rtol=0, atol=1e-6)

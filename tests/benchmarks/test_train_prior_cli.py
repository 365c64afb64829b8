"""``benchmarks/train_prior.py``'s schedule options: the recipe counts Adam steps per S (``--steps auto``), the
budget is then only a cap, and ``--steps 0`` keeps the time schedule of the earlier recipe."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import train_prior  # noqa: E402 - benchmarks/ is not a package


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    seen: list[dict] = []

    def fake_train_scale(scale, budget_s, exclude, out, seed, network, device, unpaired, unpaired_crop, ssim_weight,
                         subsample_lr, loss, steps, augment):
        seen.append({"scale": scale, "budget_s": budget_s, "steps": steps, "exclude": exclude, "loss": loss,
                     "augment": augment})

    monkeypatch.setattr(train_prior, "train_scale", fake_train_scale)
    return seen


def test_the_default_recipe_counts_steps_per_scale_under_a_wall_clock_cap(calls) -> None:
    assert train_prior.main(["--scales", "2,3,4", "--exclude", "pair00"]) == 0
    assert [(c["scale"], c["steps"], c["budget_s"]) for c in calls] == [
        (s, train_prior.RECIPE_STEPS[s], train_prior.STEP_CAP_S) for s in (2, 3, 4)]
    assert calls[0]["exclude"] == ["pair00"] and calls[0]["loss"] == "l2" and calls[0]["augment"] == "dihedral"


def test_the_prior_may_learn_the_scans_own_orientation(calls) -> None:
    train_prior.main(["--scales", "4", "--augment", "none"])
    assert calls[-1]["augment"] == "none"
    with pytest.raises(SystemExit):
        train_prior.main(["--scales", "4", "--augment", "rotate"])


def test_steps_zero_trains_by_time_and_a_given_budget_is_kept(calls) -> None:
    train_prior.main(["--scales", "4", "--steps", "0"])
    train_prior.main(["--scales", "2", "--steps", "0", "--budget-s", "60"])
    train_prior.main(["--scales", "3", "--steps", "500", "--budget-s", "90", "--loss", "l1"])
    assert [(c["steps"], c["budget_s"]) for c in calls] == [(0, train_prior.TIME_BUDGET_S), (0, 60.0), (500, 90.0)]
    assert calls[-1]["loss"] == "l1"


@pytest.mark.parametrize("argv, message", [(["--scales", "5"], "no step count for x5"),
                                           (["--scales", "2", "--steps", "-3"], "--steps must be"),
                                           (["--scales", "2", "--steps", "many"], "--steps must be")])
def test_a_scale_without_a_recipe_or_a_negative_count_is_refused(calls, argv, message) -> None:
    with pytest.raises(SystemExit, match=message):
        train_prior.main(argv)
    assert calls == []

"""The shipped pretrained EM priors and where the session starts from them: trainer rounds, fit and train."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from refscope.daemon.cli import main
from refscope.daemon.errors import StateError
from refscope.daemon.learn.prior_store import SHIPPED_PRIORS, load_prior, prior_folder
from refscope.daemon.state.net_store import SessionPairs, load_best, save_net, save_pairs
from refscope.daemon.images import write_tiff
from refscope.daemon.learn.train_round import RoundSpec, run_round
from refscope.models.net_fit import net_predictor
from refscope.models.pipeline import FitConfig, register_reference, training_grids
from refscope.models.prior import IDENTITY, PriorConfig, PriorPair, train_prior
from refscope.models.promotion import held_out_delta_psnr, split_for_validation
from refscope.models.synthetic import make_pair
from refscope.models.training import Normalisation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _synthetic(seed: int, lr_shape=(96, 128)):
    pair = make_pair(rng=np.random.default_rng(seed), lr_shape=lr_shape, factor=2.0, hr_fraction=0.5)
    geometry = register_reference(pair.lr, pair.hr, factor=2.0, config=FitConfig(scale=2))
    box, grid = training_grids(pair.lr, pair.hr, geometry, scale=2)
    (y0, y1), (x0, x1) = box
    return pair, pair.lr[y0:y1, x0:x1], grid


@pytest.fixture(scope="module")
def priors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A priors folder with a small x2 prior (the default network) trained on two synthetic pairs (not the ones
    the tests fit)."""
    root = tmp_path_factory.mktemp("priors")
    pairs = [PriorPair(p.lr, lr, grid, f"s{seed}") for seed in (21, 22) for p, lr, grid in [_synthetic(seed)]]
    fit = train_prior(pairs, scale=2, config=PriorConfig(budget_s=3.0, batch=8, patch=24))
    assert fit.network == "fullres"  # the network "auto" serves at x2
    save_net(root / "fullres-x2", fit, sources=["s21", "s22"])
    return root


def test_load_prior_finds_verifies_and_can_be_turned_off(priors: Path, monkeypatch, tmp_path: Path) -> None:
    fit = load_prior("fullres", 2, priors)
    assert fit is not None and fit.normalisation == IDENTITY and (fit.network, fit.scale) == ("fullres", 2)
    assert load_prior("auto", 2, priors).network == "fullres"  # "auto": the network served at the scale
    assert load_prior("fullres", 3, priors) is None and prior_folder("emsr", 2, priors) is None
    assert prior_folder("auto", 3, priors) is None
    monkeypatch.setenv("REFSCOPE_PRIORS", "none")
    assert load_prior("auto", 2) is None
    monkeypatch.setenv("REFSCOPE_PRIORS", str(priors))
    assert load_prior("auto", 2) is not None
    mislabelled = tmp_path / "mislabelled"
    mislabelled.mkdir()
    (mislabelled / "compact-x2").symlink_to(priors / "fullres-x2")
    with pytest.raises(StateError, match="holds a fullres x2 network, not compact x2"):
        load_prior("compact", 2, mislabelled)
    damaged = tmp_path / "damaged"
    (damaged / "fullres-x2").mkdir(parents=True)
    for item in (priors / "fullres-x2").iterdir():
        (damaged / "fullres-x2" / item.name).write_bytes(item.read_bytes())
    weights = damaged / "fullres-x2" / "net.npz"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(StateError, match="net"):
        load_prior("auto", 2, damaged)


def test_trainer_round_starts_from_the_prior(priors: Path, monkeypatch, tmp_path: Path) -> None:
    _, lr, grid = _synthetic(3)
    split = split_for_validation(lr, grid, scale=2)
    pairs = SessionPairs(2)
    pairs.add(split.train, split.held_out, ["lr.tif", "hr.tif"])
    save_pairs(tmp_path, pairs)
    monkeypatch.setenv("REFSCOPE_PRIORS", str(priors))
    spec = dict(state_dir=str(tmp_path), network="auto", strategy="real-pairs", budget_s=1.5,
                bootstrap_fraction=0.3, champion="bicubic")
    result = run_round(RoundSpec(round_index=1, prior=True, **spec))
    assert result.warm_start == "prior" and result.status in ("promoted", "kept")
    assert result.network == "fullres"  # "auto" resolved at the session's scale
    # the best checkpoint includes the prior itself: the round never scores below it on the held-out subimages
    prior = load_prior("auto", 2)
    prior.normalisation = Normalisation.from_images([split.train[0]])
    floor = held_out_delta_psnr(net_predictor(prior), split.held_out, scale=2)
    assert result.candidate["d_psnr_db"] >= floor - 1e-6
    scratch = tmp_path / "scratch"
    save_pairs(scratch, pairs)
    spec["state_dir"] = str(scratch)
    assert run_round(RoundSpec(round_index=1, prior=False, **spec)).warm_start is None


def test_fit_and_train_use_the_prior_unless_told_not_to(priors: Path, monkeypatch, tmp_path: Path, capsys) -> None:
    pair, _, _ = _synthetic(3)
    lr_path, hr_path = tmp_path / "lr.tif", tmp_path / "hr.tif"
    write_tiff(lr_path, pair.lr.astype(np.float32), pixel_size_nm=pair.lr_pixel_size_nm)
    write_tiff(hr_path, pair.hr.astype(np.float32), pixel_size_nm=pair.hr_pixel_size_nm)
    monkeypatch.setenv("REFSCOPE_PRIORS", str(priors))
    before = torch.get_num_threads()
    try:
        base = ["--method", "net", "--budget-s", "1.5", "--library-size", "300", "--threads", "1"]
        assert main(["fit", str(lr_path), str(hr_path), "-o", str(tmp_path / "a"), *base]) == 0
        assert "the pretrained prior" in capsys.readouterr().out
        assert load_best(tmp_path / "a")["scores"]["net"]["start"] == "prior"
        assert main(["fit", str(lr_path), str(hr_path), "-o", str(tmp_path / "b"), *base, "--no-prior"]) == 0
        assert "LR-only bootstrap" in capsys.readouterr().out
        assert load_best(tmp_path / "b")["scores"]["net"]["start"] == "scratch"
        assert main(["train", str(tmp_path / "c"), str(lr_path), str(hr_path), "--strategy", "real-pairs",
                     "--budget-s", "1.5", "--threads", "1"]) == 0
        assert "(from the pretrained prior)" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)


def test_shipped_priors_have_a_model_card_and_load() -> None:
    card = (SHIPPED_PRIORS / "MODEL_CARD.md").read_text()
    for network, scale in [("compact", 2), ("compact", 3), ("compact", 4), ("fullres", 2), ("fullres", 3),
                           ("fullres", 4)]:
        fit = load_prior(network, scale, SHIPPED_PRIORS)
        assert fit is not None and fit.scale == scale and fit.normalisation == IDENTITY, (network, scale)
        meta = json.loads((SHIPPED_PRIORS / f"{network}-x{scale}" / "card.json").read_text())
        assert meta["licence_of_data"] == "MIT" and meta["pairs"] and meta["steps"] > 0
        assert f"{network}-x{scale}" in card
    for scale in (2, 3, 4):  # the network served at every scale starts from a shipped prior
        assert load_prior("auto", scale, SHIPPED_PRIORS) is not None, scale
        # ... trained by the step recipe to its end, so that its recorded command gives the same prior anywhere
        meta = json.loads((SHIPPED_PRIORS / f"fullres-x{scale}" / "card.json").read_text())
        assert meta["schedule"] == {"steps": meta["steps"]} and meta["cut_by_budget"] is False, scale
        assert "--budget-s" not in meta["command"], meta["command"]
    size = sum(f.stat().st_size for f in SHIPPED_PRIORS.rglob("*") if f.is_file())
    assert size < 10 * 2 ** 20, f"shipped priors take {size / 2 ** 20:.1f} MB (at most 10 MB)"

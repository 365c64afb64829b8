"""The neural commands, in-process on a small synthetic pair: fit --method net, enhance --method net/best,
train with every strategy, the promotion gate against a corrupted training round, evaluate --method net /
--model / --protocol standard."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from refscope.daemon.cli import main
from refscope.daemon.learn.prior_store import load_prior
from refscope.daemon.offline.net import fit_session_net, split_pairs
from refscope.daemon.state.net_store import load_best, load_net, load_served
from refscope.daemon.images import read_image, write_tiff
from refscope.models.net_fit import net_predictor
from refscope.models.pipeline import FitConfig, register_reference, training_grids
from refscope.models.promotion import held_out_scores, summarise_scores
from refscope.models.training import Normalisation
from refscope.models.synthetic import make_pair

LR_SHAPE = (96, 128)
FAST = ["--threads", "1"]


@pytest.fixture(scope="module", autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("netpair")
    pair = make_pair(rng=np.random.default_rng(3), lr_shape=LR_SHAPE, factor=2.0)
    paths = {"lr": folder / "lr.tif", "hr": folder / "hr.tif"}
    write_tiff(paths["lr"], pair.lr.astype(np.float32), pixel_size_nm=pair.lr_pixel_size_nm)
    write_tiff(paths["hr"], pair.hr.astype(np.float32), pixel_size_nm=pair.hr_pixel_size_nm)
    return paths


@pytest.fixture(scope="module")
def state(files, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("netstate") / "s"
    code = main(["fit", str(files["lr"]), str(files["hr"]), "-o", str(folder), "--method", "net", "--budget-s", "3",
                 "--library-size", "500", *FAST])
    assert code == 0
    return folder


def test_fit_net_writes_state_and_best(state: Path, capsys) -> None:
    for name in ("library.json", "net.json", "net.npz", "pairs.json", "best.json"):
        assert (state / name).is_file(), name
    assert len(list(state.glob("net-*.onnx"))) == 1
    best = json.loads((state / "best.json").read_text())
    assert best["best"] in ("net", "paired", "bicubic") and best["validated"] is True
    assert best["held_out_subimages"] == 3
    assert set(best["scores"]) == {"net", "paired", "bicubic"}
    assert len(best["scores"]["net"]["per_subimage_d_psnr_db"]) == 3
    data, manifest = load_served(state)
    net = best["scores"]["net"]
    assert len(net["companion_steps"]) == 2  # the companion: LR-only bootstrap, then the pairs
    # --network auto at x2, blended with its companion and the safe baseline where they won on held-out subimages
    assert net["baseline_share"] in (0.0, 0.1, 0.2, 0.3)
    assert manifest.kind == ("blend" if net["companion_weight"] or net["baseline_share"] else "fullres")
    assert manifest.scale == 2 and data[:4] != b""
    assert load_net(state).build().scale == 2


def test_fit_without_a_companion_saves_the_network_alone(files, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    lr, pairs = _pairs(files)
    doc = fit_session_net(tmp_path / "alone", [lr], pairs, budget_s=1.0, companion=False, baseline_share=False)
    assert doc["scores"]["net"]["companion_weight"] is None and doc["scores"]["net"]["companion_steps"] is None
    assert doc["scores"]["net"]["baseline_share"] is None
    assert load_net(tmp_path / "alone").network == "fullres"


def test_fit_serves_the_share_of_the_safe_baseline_it_chose(files, tmp_path: Path) -> None:
    """The saved network is the trained one mixed with the safe baseline at the share recorded in best.json
    (σ tuned on the same held-out subimages): its held-out score is recomputed from the parts."""
    from refscope.models.net_blend import blend_members
    from refscope.models.net_fit import net_predictor
    from refscope.models.peers import tuned_blur
    from refscope.models.promotion import held_out_delta_psnr

    torch.set_num_threads(1)
    lr, pairs = _pairs(files)
    doc = fit_session_net(tmp_path / "shared", [lr], pairs, budget_s=1.0, companion=False)
    net, saved = doc["scores"]["net"], load_net(tmp_path / "shared")
    share = net["baseline_share"]
    assert share in (0.0, 0.1, 0.2, 0.3)
    members = blend_members(saved)
    if share:
        assert [m.network for m in members] == ["fullres", "baseline"]
        assert saved.network_kwargs["weights"] == pytest.approx([1 - share, share])
        sigma, _ = tuned_blur(list(pairs.held_out), scale=2)
        assert members[1].network_kwargs == {"sigma_px": sigma}
    else:
        assert saved.network == "fullres"
    expected = held_out_delta_psnr(net_predictor(saved), pairs.held_out, scale=2)
    assert net["d_psnr_db"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("method", ["net", "best", None])
def test_enhance_with_network(files, state: Path, tmp_path: Path, method, capsys) -> None:
    out = tmp_path / "sr.tif"
    args = ["enhance", str(state), str(files["lr"]), "-o", str(out)] + (["--method", method] if method else [])
    assert main(args) == 0
    printed = capsys.readouterr().out
    image = read_image(out)
    assert image.data.shape == (2 * LR_SHAPE[0], 2 * LR_SHAPE[1]) and image.data.dtype == np.float32
    assert image.pixel_size_nm == pytest.approx(5.0) and np.all(np.isfinite(image.data))
    winner = load_best(state)["best"]
    assert image.metadata.extra["method"] == ("net" if method == "net" else winner)
    if method != "net":
        assert f"best = {winner}" in printed


def test_enhance_net_refuses_corrupt_onnx(files, state: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(state, broken)
    onnx = next(broken.glob("net-*.onnx"))
    onnx.write_bytes(onnx.read_bytes()[:100])
    assert main(["enhance", str(broken), str(files["lr"]), "-o", str(tmp_path / "x.tif"), "--method", "net"]) == 2
    assert "checksum mismatch" in capsys.readouterr().err


def _pairs(files):
    lr = read_image(files["lr"]).data.astype(np.float64)
    hr = read_image(files["hr"]).data.astype(np.float64)
    geometry = register_reference(lr, hr, factor=2.0, config=FitConfig(scale=2))
    box, hr_grid = training_grids(lr, hr, geometry, scale=2)
    (y0, y1), (x0, x1) = box
    return lr, split_pairs([(lr[y0:y1, x0:x1], hr_grid)], scale=2, sources=[["lr", "hr"]])


def test_promotion_gate_rejects_corrupted_training(files, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    lr, pairs = _pairs(files)
    train_lr, train_hr = pairs.train[0]
    noise = np.random.default_rng(0).normal(train_hr.mean(), train_hr.std(), train_hr.shape)
    pairs.train[0] = (train_lr, noise)  # HR replaced by noise: the labels carry no information
    doc = fit_session_net(tmp_path / "bad", [lr], pairs, budget_s=2.0, bootstrap_fraction=0.0, use_prior=False)
    assert doc["scores"]["net"]["d_psnr_db"] < 0
    assert doc["best"] in ("paired", "bicubic")
    assert load_best(tmp_path / "bad")["best"] != "net"
    # from the shipped prior, the checkpoint chosen on held-out area never falls below the prior itself
    prior = load_prior("auto", 2)
    prior.normalisation = Normalisation.from_images([lr])
    floor = summarise_scores(held_out_scores(net_predictor(prior), pairs.held_out, scale=2))["d_psnr_db"]
    doc = fit_session_net(tmp_path / "prior", [lr], pairs, budget_s=2.0, use_prior=True)
    assert doc["scores"]["net"]["start"] == "prior"
    assert doc["scores"]["net"]["d_psnr_db"] >= floor - 1e-6


def test_train_rejects_worse_candidate(files, state: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "s"
    shutil.copytree(state, folder)
    before = json.loads((folder / "best.json").read_text())
    # a short LR-only round from scratch: whatever it scores, the saved network changes only if it beats it
    assert main(["train", str(folder), str(files["lr"]), "--strategy", "lr-only", "--budget-s", "0.3",
                 "--from-scratch", *FAST]) == 0
    after = json.loads((folder / "best.json").read_text())
    cand = after["scores"]["candidate"]
    saved = before["scores"]["net"]["d_psnr_db"]
    assert cand["accepted"] == (cand["d_psnr_db"] > saved)
    assert after["scores"]["net"]["d_psnr_db"] == pytest.approx(max(saved, cand["d_psnr_db"]))


@pytest.mark.parametrize("strategy", ["real-pairs", "noise-robust", "lr-only", "synthetic"])
def test_train_every_strategy(files, state: Path, tmp_path: Path, strategy: str, capsys) -> None:
    folder = tmp_path / "s"
    shutil.copytree(state, folder)
    assert main(["train", str(folder), str(files["lr"]), "--strategy", strategy, "--budget-s", "1", *FAST]) == 0
    out = capsys.readouterr().out
    assert f"strategy {strategy}" in out and "best:" in out
    assert load_best(folder)["scores"]["candidate"]["strategy"] == strategy


def test_train_fresh_state_with_pair(files, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "fresh"
    assert main(["train", str(folder), str(files["lr"]), str(files["hr"]), "--strategy", "real-pairs",
                 "--budget-s", "1", *FAST]) == 0
    best = load_best(folder)
    assert best["validated"] and best["best"] in ("net", "bicubic")  # no paired library in this folder
    assert main(["train", str(tmp_path / "nopairs"), str(files["lr"]), "--strategy", "real-pairs",
                 "--budget-s", "1"]) == 2
    assert "needs HR reference pairs" in capsys.readouterr().err


def test_train_judges_and_saves_the_candidate_as_it_would_be_served(files, tmp_path: Path, capsys) -> None:
    """Like fit and the daemon's rounds, a real-pairs `train` blends a new companion and the safe baseline's share
    into its candidate before judging it: the recorded score is the saved graph's own, whose members are the ones
    the recorded weights call for."""
    from refscope.daemon.state.net_store import load_pairs
    from refscope.models.net_blend import blend_members
    from refscope.models.promotion import held_out_delta_psnr

    folder = tmp_path / "served"
    assert main(["train", str(folder), str(files["lr"]), str(files["hr"]), "--strategy", "real-pairs",
                 "--budget-s", "1", *FAST]) == 0
    cand = load_best(folder)["scores"]["candidate"]
    assert cand["accepted"]  # nothing saved to beat
    assert len(cand["companion_steps"]) == 2 and cand["companion_weight"] in (0.0, 0.25, 0.5, 0.75)
    assert cand["baseline_share"] in (0.0, 0.1, 0.2, 0.3)
    saved = load_net(folder)
    members = [m.network for m in blend_members(saved)]
    assert len(members) == 1 + (cand["companion_weight"] > 0) + (cand["baseline_share"] > 0)
    assert (members[-1] == "baseline") == (cand["baseline_share"] > 0)
    expected = held_out_delta_psnr(net_predictor(saved), load_pairs(folder).held_out, scale=2)
    assert cand["d_psnr_db"] == pytest.approx(expected, abs=1e-6)  # the saved weights are float32

    alone = tmp_path / "alone"
    assert main(["train", str(alone), str(files["lr"]), str(files["hr"]), "--strategy", "real-pairs",
                 "--budget-s", "1", "--no-companion", "--no-baseline-share", *FAST]) == 0
    cand = load_best(alone)["scores"]["candidate"]
    assert cand["companion_weight"] is None and cand["baseline_share"] is None
    assert load_net(alone).network == "fullres"


def test_evaluate_model_prints_ttest(files, state: Path, tmp_path: Path, capsys) -> None:
    data, manifest = load_served(state)
    kind = manifest.kind  # the method is named after the model's kind
    model = tmp_path / f"{kind}.onnx"
    model.write_bytes(data)
    report = tmp_path / "ev.json"
    assert main(["evaluate", str(files["lr"]), str(files["hr"]), "--model", str(model), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "paired t-test against bicubic" in out and "all 12 subimages are out-of-sample" in out
    assert out.count(f"{kind} ") >= 12  # one line per subimage
    doc = json.loads(report.read_text())
    assert {t["category"] for t in doc["ttests"]} >= {"all"}
    assert sum(1 for r in doc["results"] if r["method"] == kind) == 12
    # the scale is inferred; a wrong one is refused
    assert main(["evaluate", str(files["lr"]), str(files["hr"]), "--model", str(model), "--scale", "3"]) == 2


def test_evaluate_method_net_and_standard(files, state: Path, tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(files["lr"]), str(files["hr"]), "--methods", "paired", "--method", "net",
                 "--budget-s", "1", "--no-in-sample", *FAST]) == 0
    out = capsys.readouterr().out
    assert "left 9 subimages only" in out and "\nnet " in out and "\npaired " in out and "paired t-test" in out
    model = tmp_path / "m.onnx"
    model.write_bytes(load_served(state)[0])
    assert main(["evaluate", str(files["lr"]), str(files["hr"]), "--model", str(model), "--protocol", "standard",
                 "--zoom-levels", "2"]) == 0
    out = capsys.readouterr().out
    assert "standard evaluation" in out and out.count("bicubic") >= 2


def test_parser_names_match_registries() -> None:
    from refscope.daemon.cli import commands as cli
    from refscope.models.net_fit import NET_STRATEGIES
    from refscope.models.networks import NETWORKS

    assert set(cli.NETWORK_NAMES) == set(NETWORKS) | {"auto"} and cli.NET_STRATEGIES == NET_STRATEGIES

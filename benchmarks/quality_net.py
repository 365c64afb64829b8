"""Real-data quality of the session-trained network: the 3x4 subimage protocol, out-of-sample.

For each physically acquired pair (raw FEI files read with refscope's TIFF reader, factor from the pixel sizes,
S = floor(factor) capped at 4, refscope's own global registration):

* **bicubic** (Keys), the baseline every Δ is taken against;
* **paired**: the paired library fitted on the left 9 subimages;
* **lr-only**: the network (default ``compact``) trained only on the raw LR frame with paper 001's multi-scale
  sub-processes for ``bootstrap_fraction`` of the budget: no HR pixel is used (and the LR pixels of the scored
  subimages are input at inference anyway);
* **net**: that LR-only network fine-tuned on the left 9 subimages' LR/HR pairs for the rest of the budget
  (``models.net_fit.fit_network``, strategy ``real-pairs``), as ``refscope fit --method net`` does.

All are scored on the right column's 3 subimages (never trained on) after a per-image intensity fit.
Writes the section ``quality_net`` of benchmarks/RESULTS.md and benchmarks/quality_net_results.json.

    .venv/bin/python benchmarks/quality_net.py [--pairs pair07,pair11,pair00,pair16] [--budget-s 240] [--jobs 2]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_md import write_section  # noqa: E402

DATA = Path(os.environ.get("REFSCOPE_SHARED_DATA", HERE.parent.parent / "shared" / "data")) / "sem_pairs"
DEFAULT_PAIRS = ("pair07", "pair11", "pair00", "pair16")
METHODS = ("lr-only", "net", "paired")


def run_pair(pair: dict, budget_s: float, network: str, bootstrap_fraction: float, seed: int,
             in_sample: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    from refscope.daemon.images import read_image
    from refscope.models.evaluation import training_area
    from refscope.models.image_ops import as_gray_float
    from refscope.models.net_fit import fit_network, net_predictor, score_predictors
    from refscope.models.pipeline import FitConfig, enhance, fit_library, register_reference, training_grids

    lr_img = read_image(DATA / "raw" / pair["lr_file"])
    hr_img = read_image(DATA / "raw" / pair["hr_file"])
    lr, hr = as_gray_float(lr_img.data), as_gray_float(hr_img.data)
    factor = lr_img.pixel_size_nm / hr_img.pixel_size_nm
    scale = min(int(math.floor(factor + 1e-6)), 4)
    config = FitConfig(scale=scale)
    t0 = time.perf_counter()
    geometry = register_reference(lr, hr, factor=factor, config=config)
    box, hr_grid = training_grids(lr, hr, geometry, scale=scale)
    train_lr, train_hr = training_area(lr, hr_grid, box, scale=scale)
    t1 = time.perf_counter()
    library = fit_library([(train_lr, train_hr)], config=config, geometries=[geometry])
    t_lib = time.perf_counter() - t1
    boot = fit_network([lr], [], scale=scale, network=network, budget_s=budget_s * bootstrap_fraction,
                       strategy="lr-only", seed=seed)
    tuned = fit_network([lr], [(train_lr, train_hr)], scale=scale, network=network,
                        budget_s=budget_s * (1 - bootstrap_fraction), bootstrap_fraction=0.0, strategy="real-pairs",
                        seed=seed, init=boot)
    predictors = {"lr-only": net_predictor(boot), "net": net_predictor(tuned),
                  "paired": lambda sub: enhance(sub, library, method="paired")}
    report = score_predictors(lr, hr_grid, box, scale=scale, predictors=predictors, factor=factor, geometry=geometry,
                              in_sample=in_sample)
    g = report.geometry
    return {"pair": pair["pair"], "factor": factor, "scale": scale, "box": box, "seconds": time.perf_counter() - t0,
            "library_seconds": t_lib, "library_size": len(library.library),
            "offset_error_lr_px": float(np.max(np.abs(np.array(g.offset_yx) - np.array(pair["offset_yx_lr_px"])))),
            "history": {"lr-only": boot.history, "net": tuned.history},
            "summary": report.summary(),
            "subimages": [{"method": r.method, "row": r.row, "col": r.col, "in": r.in_sample,
                           "d_psnr": r.delta.psnr, "d_ssim": r.delta.ssim} for r in report.results]}


def _row(res: dict, method: str, sample: str = "out") -> dict | None:
    return next((r for r in res["summary"] if r["method"] == method and r["sample"] == sample), None)


def gate_best(res: dict) -> dict:
    """What ``--method best`` would serve, judged out-of-sample by leave-one-out over the 3 held-out subimages.

    For each held-out subimage the promotion gate decides on the *other two*: the library serves if it beats
    bicubic, the network replaces it only if it beats both (:func:`refscope.models.promotion.decide_promotion`);
    the chosen method is then scored on the subimage left out. Returns the mean ΔPSNR/ΔSSIM and the picks.
    """
    from refscope.models.promotion import decide_promotion

    held = [r for r in res["subimages"] if not r["in"]]
    table = {m: {(r["row"], r["col"]): (r["d_psnr"], r["d_ssim"]) for r in held if r["method"] == m}
             for m in ("net", "paired")}
    table["bicubic"] = {k: (0.0, 0.0) for k in table["paired"]}
    keys = sorted(table["paired"])
    picks, d_psnr, d_ssim = [], [], []
    for key in keys:
        others = [k for k in keys if k != key]
        library = float(np.mean([table["paired"][k][0] for k in others]))
        network = float(np.mean([table["net"][k][0] for k in others]))
        champion, champion_db = ("paired", library) if library > 0 else ("bicubic", 0.0)
        pick = "net" if decide_promotion(network, champion_db).promote else champion
        picks.append(pick)
        d_psnr.append(table[pick][key][0])
        d_ssim.append(table[pick][key][1])
    return {"d_psnr": float(np.mean(d_psnr)), "d_ssim": float(np.mean(d_ssim)), "picks": picks}


def render(results: list[dict], args: argparse.Namespace, command: str, elapsed: float) -> str:
    import onnxruntime
    import torch

    lines = ["## Real-data quality: session-trained network (issue: neural super-resolution)", "",
             f"Command: `{command}` — "
             + (f"{elapsed / 60:.1f} min" if math.isfinite(elapsed) else
                "tables re-rendered from the run's saved per-subimage results (`--from-json`)")
             + f" on {platform.node() or 'this machine'} "
             f"({os.cpu_count()} cores, {platform.machine()}, shared with other work; torch {torch.__version__} "
             f"on 1 thread per pair, onnxruntime {onnxruntime.__version__}), {time.strftime('%Y-%m-%d %H:%M')}.",
             f"Network `{args.network}`, budget {args.budget_s:g} s per pair: LR-only multi-scale bootstrap "
             f"{args.bootstrap_fraction:.0%} (on the raw LR frame, no HR), then fine-tuned on the left 9 "
             "subimages' LR/HR pairs (real-pairs, ℓ1). Paired library fitted on the same left 9 subimages. "
             "Scored out-of-sample on the right column's 3 subimages, per-image linear intensity fit, Δ vs Keys "
             "bicubic (positive = better).", "",
             "| pair | factor | S | method | out ΔPSNR dB | out ΔSSIM | out Δedge | out ΔPSNR fg/bg | steps |",
             "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for method in METHODS:
            out = _row(res, method)
            hist = res["history"].get(method, [])
            steps = "+".join(str(h["steps"]) for h in hist) if hist else "–"
            if method == "net":
                steps = "+".join(str(h["steps"]) for h in res["history"]["lr-only"] + hist)
            lines.append(f"| {res['pair']} | {res['factor']:.2f} | {res['scale']} | {method} | {out['d_psnr']:+.2f} | "
                         f"{out['d_ssim']:+.4f} | {out['d_edge_sim']:+.3f} | "
                         f"{out['d_fg_psnr']:+.2f}/{out['d_bg_psnr']:+.2f} | {steps} |")
    lines += ["", "`--method best` (the promotion gate's choice, judged by leave-one-out: for each held-out subimage "
              "the gate decides on the other two -- the library serves if it beats bicubic, the network replaces it "
              "only if it beats both -- and the choice is scored on the one left out):", "",
              "| pair | factor | gate's picks | best ΔPSNR dB | best ΔSSIM |", "|---|---|---|---|---|"]
    bests = {}
    for res in results:
        best = bests[res["pair"]] = gate_best(res)
        lines.append(f"| {res['pair']} | {res['factor']:.2f} | {', '.join(best['picks'])} | {best['d_psnr']:+.2f} | "
                     f"{best['d_ssim']:+.4f} |")
    lines += ["", "Mean out-of-sample Δ vs bicubic by group (ΔPSNR dB / ΔSSIM):", "",
              "| group | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    groups = {"all": lambda r: True, "S=2 (x2.4)": lambda r: r["scale"] == 2, "S=4 (x4.17)": lambda r: r["scale"] == 4}
    means = {}
    for name, pick in groups.items():
        sel = [r for r in results if pick(r)]
        if not sel:
            continue
        cells = []
        for m in METHODS:
            dp = float(np.mean([_row(r, m)["d_psnr"] for r in sel]))
            ds = float(np.mean([_row(r, m)["d_ssim"] for r in sel]))
            means[(name, m)] = (dp, ds)
            cells.append(f"{dp:+.3f} / {ds:+.4f}")
        lines.append(f"| {name} ({len(sel)} pairs) | " + " | ".join(cells) + " |")
    net, paired, lro = means.get(("all", "net")), means.get(("all", "paired")), means.get(("S=2 (x2.4)", "lr-only"))
    if net and paired:
        verdicts = [
            f"net beats bicubic on mean ΔPSNR and ΔSSIM: {'met' if net[0] > 0 and net[1] > 0 else 'NOT met'} "
            f"({net[0]:+.3f} dB, {net[1]:+.4f})",
            f"net beats the paired library on at least one: "
            f"{'met' if net[0] > paired[0] or net[1] > paired[1] else 'NOT met'} (ΔPSNR {net[0]:+.3f} vs "
            f"{paired[0]:+.3f} dB, ΔSSIM {net[1]:+.4f} vs {paired[1]:+.4f})"]
        worst = min(bests.values(), key=lambda b: b["d_psnr"])["d_psnr"]
        verdicts.append(f"`--method best` never more than 0.1 dB below bicubic on any pair: "
                        f"{'met' if worst >= -0.1 else 'NOT met'} (worst pair {worst:+.2f} dB)")
        if lro:
            verdicts.append(f"LR-only beats bicubic at S=2: {'met' if lro[0] > 0 else 'NOT met'} "
                            f"({lro[0]:+.3f} dB, ΔSSIM {lro[1]:+.4f})")
        lines += ["", "Targets: " + "; ".join(verdicts) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default=",".join(DEFAULT_PAIRS), help="comma-separated pair names")
    parser.add_argument("--budget-s", type=float, default=240.0, help="training seconds per pair (default 240)")
    parser.add_argument("--bootstrap-fraction", type=float, default=0.3)
    parser.add_argument("--network", default="compact", choices=("compact", "emsr"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--in-sample", action="store_true", help="also score the 9 training subimages")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--from-json", metavar="F", help="re-render saved results (quality_net_results.json) "
                        "without training; --budget-s etc. must match the run that saved them")
    args = parser.parse_args(argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        section = render(results, args, ".venv/bin/python benchmarks/quality_net.py "
                         f"--budget-s {args.budget_s:g} --jobs {args.jobs}", float("nan"))
        print(section)
        if not args.no_write:
            write_section("quality_net", section)
        return 0
    if not (DATA / "pairs.json").is_file():
        print(f"real data not found at {DATA}", file=sys.stderr)
        return 2
    wanted = args.pairs.split(",")
    pairs = {p["pair"]: p for p in json.loads((DATA / "pairs.json").read_text())}
    missing = [w for w in wanted if w not in pairs]
    if missing:
        print(f"unknown pair(s) {missing}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    todo = [pairs[w] for w in wanted]
    n = len(todo)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_pair, todo, [args.budget_s] * n, [args.network] * n,
                                [args.bootstrap_fraction] * n, [args.seed] * n, [args.in_sample] * n))
    elapsed = time.perf_counter() - start
    command = ".venv/bin/python benchmarks/quality_net.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = render(results, args, command.strip(), elapsed)
    print(section)
    if not args.no_write:
        write_section("quality_net", section)
        (HERE / "quality_net_results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

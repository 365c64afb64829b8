"""The safe blend (issue 12, item 3): what it costs where the model is right, what it saves where a model is wrong.

    .venv/bin/python benchmarks/bench_safe_blend.py [--no-write]

1. **Real pairs** (the six scored ``sem_pairs``, the quality benchmark's protocol: learn on the left 9 subimages,
   score the right 3, linear intensity fit, Δ vs bicubic). The paired library is fitted on the training area with
   its safe baseline chosen as the daemon's learner chooses it (blur of bicubic best on the validation strip,
   ``q_ref`` of the training LR). Three models are served with and without the blend, in the same run:

   * ``library``: the library itself (a model that is right);
   * ``hallucinated``: its output plus invented fine texture (white noise of half the output's standard
     deviation, blurred by 1 output px: detail made up beyond the LR band);
   * ``misrendered``: the same invented texture blurred by S output px (made up within the LR band: structure
     the LR frame itself contradicts);
   * ``swapped``: the right half of its output replaced by the left half mirrored (a model gone wrong on part of
     the frame: detail that belongs elsewhere);

   beside the safe baseline alone. The blend should leave ``library`` unchanged and bring the wrong ones to
   about the baseline where they are wrong.
2. **Full frames** (a 1536x1024 frame of the same session at x2 and x4, the library of ``bench_full_frame``'s
   case): time of the blend on the serving path -- support grid, one pass of the forward model, and the
   baseline where it is used -- for the library's own output (nothing handed over) and for the misrendered
   one; median of ``--runs``. (A contrast-inverted output would not do as a wrong model here: the
   protocol's linear intensity fit, which may flip the sign, scores it as the library itself.)

Writes the ``safe-blend`` section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_md import write_section  # noqa: E402
from sem_pairs import SCORED, load_pair  # noqa: E402

from refscope.daemon.images.tiff_read import read_image  # noqa: E402
from refscope.models.confidence import key_index  # noqa: E402
from refscope.models.evaluation import COLS  # noqa: E402
from refscope.models.peers import blur_predictor  # noqa: E402
from refscope.models.pipeline import FitConfig, enhance, fit, fit_library, training_grids  # noqa: E402
from refscope.models.promotion import held_out_delta_psnr, split_for_validation  # noqa: E402
from refscope.models.safe_blend import blend_with_library, choose_safe_baseline  # noqa: E402

RAW = Path(os.environ.get("REFSCOPE_SHARED_DATA", HERE.parent.parent / "shared" / "data")) / "sem_pairs" / "raw"
FULL = {4: ("3b9a58__NiO_DCs_5KV_1200x_ETD_HV_s5.0_13.5WD_032.tif", "96336e__NiO_DC_5000x_E.tif",
            "de7d85__NiO_DCs_5KV_1200x_ETD_HV_s5.0_13.4WD_028.tif"),
        2: ("96336e__NiO_DC_5000x_E.tif", "f63c41__NiO_DC_12000x_D.tif", "c2da01__NiO_DC_5000x_D.tif")}
MODELS = ("library", "hallucinated", "misrendered", "swapped")


def wrong(name: str, out: np.ndarray, scale: int) -> np.ndarray:
    """The model outputs of section 1 made from the library's output ``out`` at ``scale`` (seeded)."""
    if name in ("hallucinated", "misrendered"):
        blur = 1.0 if name == "hallucinated" else float(scale)
        texture = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal(out.shape), blur)
        return out + 0.5 * out.std() * texture / texture.std()
    if name == "swapped":
        half = out.shape[1] // 2
        res = out.copy()
        res[:, half:] = out[:, :half][:, ::-1][:, : out.shape[1] - half]
        return res
    return out


def d_psnr(hr: np.ndarray, est: np.ndarray, lr: np.ndarray, scale: int) -> float:
    """ΔPSNR of the output ``est`` of ``lr`` over bicubic against ``hr``, as the protocol scores it."""
    return held_out_delta_psnr(lambda _: est, ((lr, hr),), scale=scale)


def real_pairs() -> list[dict]:
    rows = []
    for name in SCORED:
        p = load_pair(name)
        scale = p.scale
        train_lr, train_hr = p.region(scale, columns=(0, COLS - 1))
        split = split_for_validation(train_lr, train_hr, scale=scale)
        library = fit_library([(train_lr, train_hr)], config=FitConfig(scale=scale))
        library.safe = choose_safe_baseline(library, [train_lr], split.held_out)
        sigma = library.safe.sigma_px
        keys = key_index(library)
        lr, hr = p.region(scale, columns=(COLS - 1, COLS))  # the scored column (its 3 subimages together)
        out = enhance(lr, library)
        row = {"pair": name, "scale": scale, "sigma_px": sigma,
               "baseline": d_psnr(hr, blur_predictor(sigma, scale)(lr), lr, scale)}
        for model in MODELS:
            served = wrong(model, out, scale)
            blended = served.astype(np.float32)
            _, summary = blend_with_library(blended, lr, library, keys=keys)
            row[model] = d_psnr(hr, served, lr, scale)
            row[f"{model}+blend"] = d_psnr(hr, blended.astype(np.float64), lr, scale)
            row[f"{model} share"] = summary.blended_share
        rows.append(row)
        print(name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return rows


def full_frames(runs: int) -> list[dict]:
    rows = []
    for scale, (lr_name, hr_name, frame_name) in sorted(FULL.items()):
        lr, hr, frame = (read_image(RAW / n) for n in (lr_name, hr_name, frame_name))
        factor = lr.pixel_size_nm / hr.pixel_size_nm
        lr_data, hr_data = np.asarray(lr.data, np.float64), np.asarray(hr.data, np.float64)
        model = fit(lr_data, [(hr_data, factor)], config=FitConfig(scale=scale))
        ((y0, y1), (x0, x1)), grid = training_grids(lr_data, hr_data, model.geometries[-1], scale=scale)
        region = lr_data[y0:y1, x0:x1]
        split = split_for_validation(region, grid, scale=scale)
        model.safe = choose_safe_baseline(model, [region], split.held_out)  # as `refscope fit` chooses it
        keys = key_index(model)
        data = np.asarray(frame.data, np.float64)
        out = enhance(data, model).astype(np.float32)
        for case, image in (("library", out), ("misrendered", wrong("misrendered", out, scale).astype(np.float32))):
            times, share = [], 0.0
            for _ in range(runs + 1):
                work = image.copy()
                start = time.perf_counter()
                _, summary = blend_with_library(work, data, model, keys=keys)
                times.append(time.perf_counter() - start)
                share = summary.blended_share
            rows.append({"scale": scale, "shape": list(data.shape), "case": case,
                         "p50_s": statistics.median(times[1:]), "max_s": max(times[1:]), "blended_share": share})
            print(rows[-1], flush=True)
    return rows


def render(pairs: list[dict], frames: list[dict], command: str, elapsed: float) -> str:
    cols = ["baseline"] + [f"{m}{s}" for m in MODELS for s in ("", "+blend")]
    lines = ["## The safe blend: what it costs where the model is right, what it saves where one is wrong "
             "(`benchmarks/bench_safe_blend.py`, issue 12 item 3)", "",
             f"Command: `{command}` — {elapsed / 60:.1f} min on {platform.node() or 'this machine'} "
             f"({os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}), "
             f"{time.strftime('%Y-%m-%d')}. Default `SafeBlendConfig` (support ratio 2 → 6, local consistency 4 → 6).",
             "",
             "Real pairs: the library fitted on the left 9 subimages with its safe baseline (blur σ chosen on the "
             "validation strip), scored on the right 3 (linear intensity fit, ΔPSNR dB vs bicubic). `hallucinated`: "
             "the library's output plus invented texture (white noise of half its standard deviation, blurred 1 px: "
             "beyond the LR band); `misrendered`: the same blurred S px (within the LR band, which the LR "
             "contradicts); "
             "`swapped`: its right half replaced by its left half mirrored. `+blend`: pulled toward the safe "
             "baseline as the daemon serves it. Share: output pixels the baseline contributed to.", "",
             "| pair | S | σ px | " + " | ".join(cols) + " | share (library / hallucinated / misrendered / swapped) |",
             "|---|---|---|" + "---|" * len(cols) + "---|"]
    for r in pairs:
        lines.append(f"| {r['pair']} | {r['scale']} | {r['sigma_px']:g} | " + " | ".join(f"{r[c]:+.2f}" for c in cols)
                     + " | " + " / ".join(f"{r[m + ' share']:.3f}" for m in MODELS) + " |")
    lines.append("| **mean** | | | " + " | ".join(f"**{np.mean([r[c] for r in pairs]):+.2f}**" for c in cols)
                 + " | |")
    lines += ["", "Full 1536x1024 frames (library of `bench_full_frame`'s case, a frame it did not learn from): "
              "time of the blend alone on the serving path (support grid, one forward-model pass, the baseline "
              "where it is used) for the library's output and the misrendered one, median of the timed runs.", "",
              "| S | output | case | p50 s | max s | blended share |", "|---|---|---|---|---|---|"]
    for r in frames:
        h, w = r["shape"]
        lines.append(f"| {r['scale']} | {h * r['scale']}x{w * r['scale']} | {r['case']} | {r['p50_s']:.3f} | "
                     f"{r['max_s']:.3f} | {r['blended_share']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if not RAW.is_dir():
        print(f"real data not found at {RAW}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    pairs = real_pairs()
    frames = full_frames(args.runs)
    command = ".venv/bin/python benchmarks/bench_safe_blend.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = render(pairs, frames, command.strip(), time.perf_counter() - start)
    print(section)
    if not args.no_write:
        write_section("safe-blend", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

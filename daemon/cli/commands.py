"""The ``refscope`` command line: fit a paired library, enhance frames, evaluate a pair, run the demos.

::

    refscope fit LR.tif HR.tif [HR2.tif ...] -o STATE_DIR [--scale S] [--lr-pixel-size NM --hr-pixel-size NM]
                 [--method paired|net] [--budget-s N] [--network auto|compact|fullres|emsr]
    refscope train STATE_DIR LR.tif [HR.tif ...] --strategy real-pairs|noise-robust|lr-only|synthetic [--budget-s N]
    refscope enhance STATE_DIR IN.tif [IN2.tif | FOLDER ...] -o OUT [--method M|net|best] [--sigma-n X]
    refscope batch STATE_DIR IN... -o OUT [--method paired|net|best] [--scheduler threads|processes|tcp://...]
                 [--workers N] [--block LR_PX] [--quiet]   (Dask, resumable; see .batch)
    refscope evaluate LR.tif HR.tif [--scale S] [--methods a,b] [--method net] [--model F.onnx] [--protocol P]
                 [--no-in-sample] [--json F] [--csv F] [--plot F]
    refscope demo [--headless] [--duration S] [--json F] [--small] [--seed N] [--workdir DIR]   (live)
    refscope demo --offline [--seed N] [--json F] [--small] [--workdir DIR]
    refscope simulate (--out DIR | --zmq EP) [--requests-dir DIR | --events EP] [...]   (see .simulate)

Pixel sizes are in nm, read from the FEI/Zeiss/ImageJ metadata unless the flags give them. A bad input file
ends the command with one line ``refscope <cmd>: error: <file>: <problem>`` on stderr and exit code 2.
The neural commands (``--method net``, ``train``, ``evaluate --model``) live in :mod:`refscope.daemon.offline.net`.
This module parses arguments and runs the commands with the plain functions of the offline room
(:mod:`refscope.daemon.offline.files`: read, register, fit, enhance, evaluate files), saves models (:mod:`refscope.daemon.state.model_store`) and hands
evaluation reports to :mod:`refscope.daemon.offline.report`; nothing here modifies an input file.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time

from refscope.models.library import LibraryConfig
from refscope.models.network_names import NETWORK_NAMES as REGISTERED_NETWORKS
from refscope.models.pipeline import METHODS, FitConfig, default_patch_size
from refscope.models.self_ensemble import ENSEMBLE_SIZES
from refscope.tui.cli import add_tui_parser, load_run_tui

from .batch import add_batch_parser
from .daemon import add_daemon_parser
from .keys import add_keys_parser
from .replay import add_replay_parser
from ..offline.simulate import add_simulate_parser
from ..errors import RefscopeError, one_line
from ..state.model_domain import ModelDomain
from ..state.model_store import load_domain, load_model, save_model
from ..offline.progress import progress
from ..state.provenance import refscope_version
from ..offline.report import format_table, write_csv, write_json, write_plot
from ..offline.files import (check_output_file, check_output_folder, check_stage_positions, enhance_files,
                            evaluate_files, fit_files, load_frame, register_files)

__all__ = ["main", "build_parser"]

log = logging.getLogger("refscope.cli")


# ----------------------------------------------------------------------------------------------- commands


def _cmd_fit(args: argparse.Namespace) -> int:
    check_output_folder(args.output, "-o")  # before the work, not after it
    lr = load_frame(args.lr, pixel_size_nm=args.lr_pixel_size, flag="--lr-pixel-size", detector=args.detector)
    refs = [load_frame(p, pixel_size_nm=args.hr_pixel_size, flag="--hr-pixel-size", detector=args.detector)
            for p in args.hr]
    try:
        library = LibraryConfig(patch_size=args.patch_size or default_patch_size(args.scale), size=args.library_size,
                                seed=args.seed)
    except ValueError as exc:
        raise ValueError(f"--patch-size/--library-size: {exc}") from exc
    start = time.perf_counter()
    config = FitConfig(scale=args.scale, library=library, min_relative_ncc=0.0 if args.force else 0.8)
    for hr in refs:
        check_stage_positions(lr, hr, force=args.force)
    with progress("fit: registering the reference(s)", None, quiet=args.quiet) as steps:
        registered = register_files(lr, refs, config)
        steps.say("fit: building the library")
        model = fit_files(lr, refs, config, registered)
    save_model(args.output, model, sources=[str(lr.path)] + [str(r.path) for r in refs],
               domain=ModelDomain.of(lr))
    for hr, g in zip(refs, model.geometries):
        print(f"{hr.path}: x{lr.pixel_size_nm / hr.pixel_size_nm:.3g} at LR offset (y, x) = "
              f"({g.offset_yx[0]:.2f}, {g.offset_yx[1]:.2f}) px, rotation {g.rotation_deg:+.2f} deg, NCC {g.score:.3f}")
    print(f"library: {len(model.library)} patch pairs ({library.patch_size}x{library.patch_size} px, "
          f"{library.n_categories} categories), scale x{model.scale}, noise sigma {model.noise_sigma:.2f} "
          f"(library units), fitted in {time.perf_counter() - start:.1f} s")
    print(f"saved model to {args.output}")
    if args.method == "net":
        from ..offline import net as net_cli

        net_cli.fit_net(args, lr, refs, registered[0], config)
        print(f"saved network, pairs and best.json to {args.output}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ..offline import net as net_cli

    return net_cli.cmd_train(args)


def _cmd_enhance(args: argparse.Namespace) -> int:
    from ..offline import net as net_cli

    requested = args.method or ("best" if net_cli.has_net(args.state_dir) else "paired")
    method = net_cli.resolve_method(args.state_dir, requested)
    model, runner, scale, method = net_cli.enhance_runner(args.state_dir, method, self_ensemble=args.self_ensemble)
    label = f"best = {method}" if requested == "best" else None
    return enhance_files(model, args.inputs, args.output, method=method, sigma_n=args.sigma_n,
                         engine=args.engine, runner=runner, scale=scale, label=label, state_dir=args.state_dir,
                         domain=load_domain(args.state_dir), strict=args.strict, quiet=args.quiet,
                         dtype=args.dtype, detector=args.detector)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    for flag, path in (("--json", args.json), ("--csv", args.csv), ("--plot", args.plot)):
        if path:
            check_output_file(path, flag)  # before minutes of work, not after them
    lr = load_frame(args.lr, pixel_size_nm=args.lr_pixel_size, flag="--lr-pixel-size", detector=args.detector)
    hr = load_frame(args.hr, pixel_size_nm=args.hr_pixel_size, flag="--hr-pixel-size", detector=args.detector)
    extra = [m for m in (args.method or []) if m not in (args.methods or ())]
    if args.methods is None:
        args.methods = () if args.model else ("paired", "paired-faithful", "original")
    args.methods = tuple(args.methods) + tuple(extra)
    if args.model or "net" in args.methods or args.protocol == "standard" or args.peers:
        from ..offline import net as net_cli

        return net_cli.cmd_evaluate(args, lr, hr)
    if not args.methods:
        raise ValueError("no method to evaluate; give --methods")
    start = time.perf_counter()
    with progress(f"evaluate: {len(args.methods)} method(s), 3x4 subimages", None, quiet=args.quiet):
        report = evaluate_files(lr, hr, scale=args.scale, methods=args.methods, in_sample=not args.no_in_sample)
    seconds = time.perf_counter() - start
    g = report.geometry
    print(f"{hr.path} in {lr.path}: x{report.factor:.3g}, offset (y, x) = ({g.offset_yx[0]:.2f}, "
          f"{g.offset_yx[1]:.2f}) LR px, rotation {g.rotation_deg:+.2f} deg, NCC {g.score:.3f}")
    print(f"scale x{report.scale}, library {report.library_size} pairs, noise sigma {report.noise_sigma:.2f}; "
          f"differences to bicubic (positive = better), {seconds:.1f} s")
    print(format_table(report))
    settings = {"lr": str(lr.path), "hr": str(hr.path), "lr_pixel_size_nm": lr.pixel_size_nm,
                "hr_pixel_size_nm": hr.pixel_size_nm, "protocol": args.protocol, "methods": list(args.methods),
                "in_sample": not args.no_in_sample, "elapsed_s": seconds}
    for path, writer in ((args.json, write_json), (args.csv, write_csv), (args.plot, write_plot)):
        if path:
            writer(path, report, settings)
            print(f"wrote {path}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ..offline import bench  # imports torch for the networks: only when benchmarking

    if args.state_dir:
        model = load_model(args.state_dir)
        _, lr = bench.synthetic_model(scale=model.scale)
    else:
        model, lr = bench.synthetic_model()
    height, width = args.size
    if height % model.scale or width % model.scale:
        raise ValueError(f"--size {width}x{height} is not a multiple of the model's scale {model.scale}")
    frame = bench.bench_frame(lr, (height // model.scale, width // model.scale))
    timings = bench.run_bench(model, frame, runs=args.runs, networks=tuple(args.networks.split(",")) if args.networks
                              else bench.NETWORKS)
    print(bench.format_timings(timings, shape_out=(height, width)))
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in output pixels, e.g. 1280x944, got {text!r}")
    if min(width, height) < 16:
        raise argparse.ArgumentTypeError(f"output size {text} is too small (at least 16x16)")
    return height, width


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.offline:
        from ..offline.demo import run_demo  # the offline demo runs this module's commands (handed in: no import back)

        return run_demo(main, seed=args.seed, json_path=args.json, small=args.small, workdir=args.workdir)
    from ..offline.live_demo import run_live_demo

    tui = None if args.headless or not sys.stdout.isatty() else load_run_tui()
    return run_live_demo(headless=args.headless, duration_s=args.duration, json_path=args.json,
                         workdir=args.workdir, seed=args.seed, small=args.small, interval_s=args.interval, tui=tui)


# ----------------------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line ``refscope <cmd>: error: <problem>`` (exit code 2), like input errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _scale(text: str) -> int:
    if not text.isdigit() or not 2 <= int(text) <= 8:
        raise argparse.ArgumentTypeError(f"must be an integer from 2 to 8, got {text!r}")
    return int(text)


def _methods(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in names if m not in METHODS + ("net",)]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method {', '.join(unknown) or text!r}; choose from "
                                         f"{', '.join(METHODS + ('net',))}")
    return names


def _budget(text: str) -> float:
    value = _positive(text)
    if value > 7 * 24 * 3600:
        raise argparse.ArgumentTypeError(f"must be at most one week of seconds, got {text!r}")
    return value


#: ``auto`` and the names of :data:`refscope.models.networks.NETWORKS` (read without importing PyTorch), and
#: :data:`refscope.models.net_fit.NET_STRATEGIES`, spelled out so that building the parser does not import
#: PyTorch (a test keeps them in step with the registries).
NETWORK_NAMES = ("auto",) + REGISTERED_NETWORKS
NET_STRATEGIES = ("real-pairs", "noise-robust", "lr-only", "synthetic")


def _net_flags(parser: argparse.ArgumentParser, *, network_default: str | None = "auto") -> None:
    parser.add_argument("--budget-s", type=_budget, default=240.0, metavar="N",
                        help="network training time budget in seconds (default 240)")
    parser.add_argument("--network", choices=NETWORK_NAMES, default=network_default,
                        help="network to train: auto = the network served at the scale (today fullres) (default "
                        + (network_default or "the saved one, else auto") + ")")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for training (default: PyTorch's choice)")
    parser.add_argument("--no-prior", action="store_true",
                        help="fit and train: start the network from scratch (LR-only bootstrap) instead of fine-tuning "
                        "the pretrained EM prior shipped for its network and scale")
    parser.add_argument("--no-companion", action="store_true",
                        help="fit and train: train the network alone; by default a smaller companion network is "
                        "then trained from scratch for another --budget-s and the two are served blended where that "
                        "wins on held-out reference area")
    parser.add_argument("--no-baseline-share", action="store_true",
                        help="fit and train: serve the networks alone; by default a share (0 to 0.3, chosen on "
                        "held-out reference area) of the safe baseline, bicubic blurred by the tuned σ, is mixed "
                        "into them")


def _pixel_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lr-pixel-size", type=_positive, metavar="NM", help="LR pixel size in nm (overrides the file)")
    parser.add_argument("--hr-pixel-size", type=_positive, metavar="NM", help="HR pixel size in nm (overrides the file)")


def build_parser() -> argparse.ArgumentParser:
    """The ``refscope`` argument parser with its fit/enhance/evaluate/demo subcommands."""
    parser = _Parser(prog="refscope", description="Super-resolution of SEM frames learned from paired HR reference "
                     "scans (Qian et al., IEEE TIP 2020).")
    parser.add_argument("--version", action="version", version=f"refscope {refscope_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log progress to stderr (-vv: debug)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log progress to stderr")
    common.add_argument("-q", "--quiet", action="store_true", default=False,
                        help="no progress display (it appears only on a terminal anyway)")
    common.add_argument("--detector", metavar="NAME", default=None,
                        help="detector to read from a file holding several (Velox EMD: HAADF, DF2, DF4, BF...; "
                        "default HAADF)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("fit", parents=[common], help="fit a paired library from an LR frame and HR reference(s)",
                       description="Register each HR reference in the LR frame and fit a paired patch library.")
    p.add_argument("lr", metavar="LR.tif", help="low-resolution frame")
    p.add_argument("hr", metavar="HR.tif", nargs="+", help="high-resolution reference scan(s) inside the LR field")
    p.add_argument("-o", "--output", metavar="STATE_DIR", required=True, help="folder to save the model in")
    p.add_argument("--scale", type=_scale, default=2, metavar="S", help="output scale, 2-8 (default 2)")
    _pixel_flags(p)
    p.add_argument("--library-size", type=int, default=8000, metavar="L", help="patch pairs kept (default 8000)")
    p.add_argument("--patch-size", type=int, metavar="N", help="odd patch side on the output grid (default 9)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the library sampling (default 0)")
    p.add_argument("--force", action="store_true",
                   help="learn from a reference even if its stage position puts it outside the LR field or it "
                   "matches the LR frame too poorly to be of the same area (a warning instead of a refusal)")
    p.add_argument("--method", choices=("paired", "net"), default="paired",
                   help="paired: the paired library only (default); net: also train the network on the pairs, "
                   "validate both on held-out subimages and record the winner in STATE_DIR/best.json")
    _net_flags(p)
    p.set_defaults(handler=_cmd_fit)

    p = sub.add_parser("train", parents=[common], help="(re)train the network in a state folder with a strategy",
                       description="Train the network on the LR frame (and the HR reference pairs given here or "
                       "stored by `fit --method net`) with one strategy, warm-started from the saved network. "
                       "It replaces the saved network only if it beats it on the held-out subimages.")
    p.add_argument("state_dir", metavar="STATE_DIR", help="state folder (created if missing)")
    p.add_argument("lr", metavar="LR.tif", help="low-resolution frame")
    p.add_argument("hr", metavar="HR.tif", nargs="*", help="new HR reference scan(s) inside the LR field")
    p.add_argument("--strategy", choices=NET_STRATEGIES, required=True,
                   help="real-pairs: LR/HR pairs, l1; noise-robust: pairs with the noisier-input branch (EMSR eq. "
                   "16); lr-only: multi-scale pairs from the LR frame alone; synthetic: the HR grids degraded to LR")
    p.add_argument("--scale", type=_scale, metavar="S", help="output scale of a new state (default 2)")
    p.add_argument("--from-scratch", action="store_true", help="do not warm-start from the saved network")
    p.add_argument("--bootstrap-fraction", type=float, default=0.3, metavar="F",
                   help="share of the budget for LR-only pre-training when not warm-starting (default 0.3)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of initialisation and sampling")
    _net_flags(p, network_default=None)
    _pixel_flags(p)
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("enhance", parents=[common], help="super-resolve frames with a fitted model",
                       description="Super-resolve LR frames (files or folders) with the model in STATE_DIR.")
    p.add_argument("state_dir", metavar="STATE_DIR", help="folder written by `refscope fit`")
    p.add_argument("inputs", metavar="IN", nargs="+", help="LR frame(s) (TIFF, PNG, DM3/DM4, EMD, SER, MRC) or "
                   "folder(s) of frames; a stack or series file gives one 3-D output")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="output .tif for one input; otherwise a folder receiving <stem>_x<S>.tif")
    p.add_argument("--method", choices=METHODS + ("net", "best"), default=None,
                   help="reconstruction method: net serves the trained network through ONNX Runtime, best the "
                   "winner recorded in best.json (default: best once a network exists, else paired)")
    p.add_argument("--sigma-n", type=_positive, metavar="X", help="NLM strength: relative to the measured noise for paired (default 1), "
                   "in library units (1/255 of the LR range) for paired-faithful/original (default 1)")
    p.add_argument("--engine", choices=("onnx", "numpy"), default="onnx",
                   help="onnx: serve through ONNX Runtime like the daemon (default); numpy: the reference code")
    p.add_argument("--self-ensemble", type=int, choices=ENSEMBLE_SIZES, default=1, metavar="N",
                   help="passes of the network over flipped and rotated copies of each frame, averaged: 1 (default), "
                   "2, 4 or 8 (N times the time; about +0.02, +0.03, +0.04 dB on real pairs)")
    p.add_argument("--dtype", choices=("input", "float32"), default="input",
                   help="output pixel type: input (default: uint8/uint16 inputs give rounded, clipped uint8/uint16 "
                   "outputs, others float32) or float32")
    p.add_argument("--strict", action="store_true",
                   help="refuse (exit 2) a frame outside the model's domain -- pixel size off by more than 20 %%, "
                   "another bit depth or detector -- instead of a warning")
    p.set_defaults(handler=_cmd_enhance)

    p = sub.add_parser("evaluate", parents=[common], help="score the methods on one LR/HR pair (3x4 subimages)",
                       description="Paper protocol: fit on the left 9 subimages of the overlap, score all 12 "
                       "against the HR reference; differences to bicubic, positive = better.")
    p.add_argument("lr", metavar="LR.tif")
    p.add_argument("hr", metavar="HR.tif")
    p.add_argument("--scale", type=_scale, metavar="S", help="output scale (default min(floor(factor), 4))")
    p.add_argument("--protocol", choices=("subimages", "physical", "standard"), default="subimages",
                   help="subimages (= physical, default): the LR frame's own pixels against the registered HR; "
                   "standard (paper 001): HR subimages nearest-neighbour degraded, over a range of zoom levels")
    p.add_argument("--methods", type=_methods, default=None, metavar="M1,M2",
                   help=f"comma-separated, from {', '.join(METHODS + ('net',))} (default paired,paired-faithful,"
                   "original; none with --model)")
    p.add_argument("--method", action="append", choices=METHODS + ("net",), metavar="M",
                   help="add one method; net trains the network within --budget-s on the left 9 subimages only")
    p.add_argument("--model", metavar="F.onnx", help="score any single-image SR ONNX model (N, 1, H, W) -> "
                   "(N, 1, S*H, S*W) on all 12 subimages, with paired t-tests against bicubic")
    p.add_argument("--model-offset", type=float, metavar="X",
                   help="model input normalisation (x - X) * Y (default X = the LR frame's minimum)")
    p.add_argument("--model-scale", type=float, metavar="Y",
                   help="model input normalisation factor (default 1 / (max - min) of the LR frame)")
    p.add_argument("--zoom-levels", type=int, default=4, metavar="N",
                   help="zoom levels of the standard protocol, from 1/S to 1 (default 4)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the network training")
    _net_flags(p)
    p.add_argument("--no-in-sample", action="store_true", help="score only the 3 out-of-sample subimages (faster)")
    p.add_argument("--peers", action="store_true",
                   help="also score the classical peers (a Gaussian blur of bicubic, non-local means of the LR), each "
                   "tuned on the right quarter of the training area, never on the scored subimages")
    p.add_argument("--json", metavar="F", help="write every score, the summary, geometry and settings as JSON")
    p.add_argument("--csv", metavar="F", help="write the summary rows as CSV")
    p.add_argument("--plot", metavar="F.png", help="write a bar chart of the PSNR gains as PNG")
    _pixel_flags(p)
    p.set_defaults(handler=_cmd_evaluate)

    p = sub.add_parser("demo", parents=[common], help="live demo: the daemon beside a simulated microscope",
                       description="Live (default): run the daemon beside a simulated microscope on a temporary "
                       "folder -- enhanced frames, a reference requested when the specimen changes, the microscope "
                       "answering it, quality recovering (TUI if available, else a status line every few seconds). "
                       "--offline: make a synthetic LR/HR pair, then run fit, enhance and evaluate on it.")
    p.add_argument("--offline", action="store_true", help="the offline demo (fit, enhance, evaluate one pair)")
    p.add_argument("--headless", action="store_true", help="live: no TUI; print the timeline and figures at the end")
    p.add_argument("--duration", type=_positive, metavar="S",
                   help="live: run S seconds (default 60 headless, 90 with text output, until quit with the TUI)")
    p.add_argument("--interval", type=_positive, metavar="S", help="live: seconds between frames (default 0.5)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the synthetic specimen (default 0)")
    p.add_argument("--json", metavar="F", help="also write the summary (live) or the evaluation (offline) as JSON")
    p.add_argument("--small", action="store_true", help="small frames (faster)")
    p.add_argument("--workdir", metavar="DIR", help="folder for the files (default: a new temporary folder)")
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser("bench", parents=[common], help="serving speed on this machine, as ratios to the exact code",
                       description="Time the exact NumPy paired reconstruction (baseline), the same model served "
                       "through ONNX Runtime as the daemon serves it, and each neural network; print p50/p99 "
                       "latency, Mpx/s and speed-ups measured in the same run.")
    p.add_argument("state_dir", metavar="STATE_DIR", nargs="?", help="a fitted model (default: fit a synthetic one)")
    p.add_argument("--size", type=_size, default=(944, 1280), metavar="WxH", help="output size (default 1280x944)")
    p.add_argument("--runs", type=int, default=5, metavar="N", help="timed runs per served path (default 5)")
    p.add_argument("--networks", metavar="A,B", help="networks to time (default: all registered; '' for none)")
    p.set_defaults(handler=_cmd_bench)

    add_batch_parser(sub)
    add_daemon_parser(sub)
    add_simulate_parser(sub)
    add_tui_parser(sub)
    add_keys_parser(sub)
    add_replay_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``refscope`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code (2 for bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argument errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except (RefscopeError, ValueError, OSError) as exc:
        print(f"refscope {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"refscope {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

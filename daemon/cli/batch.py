"""Arguments of ``refscope batch`` and the scheduler it runs on (the work itself is :mod:`refscope.daemon.offline.batch`).

``--scheduler`` picks where blocks are computed:

* ``threads`` (default): this process, ``--workers`` threads (default: every core), one ONNX Runtime session
  shared by the threads (it releases the GIL);
* ``processes``: a ``distributed.LocalCluster`` of ``--workers`` processes with one thread each, started for the
  run and closed after it;
* ``tcp://HOST:PORT`` (or any ``distributed`` address): an existing Dask cluster. Its workers need refscope
  installed; they receive the model's bytes (a worker plugin) and the input pixels (scattered by this client),
  never a path, and the outputs are written by this client.
"""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from refscope.models.self_ensemble import ENSEMBLE_SIZES

from ..offline.batch_files import DEFAULT_BLOCK_PX, MIN_BLOCK_PX
from ..errors import RefscopeError

__all__ = ["add_batch_parser", "cmd_batch", "open_runner", "check_scheduler"]


EXIT_CODES = ("exit codes: 0 every output written or already done; 1 some inputs failed (reported, skipped), "
              "the others were written; 2 nothing done: every input failed, or a bad state folder, option or "
              "scheduler")


def _at_least(minimum: int):
    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return int(text)

    return parse


def add_batch_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``batch`` subcommand (handler :func:`cmd_batch`) to ``subparsers``; returns the subparser."""
    p = subparsers.add_parser(
        "batch", help="reprocess frames, folders or TIFF stacks with a session's model on Dask (resumable)",
        description="Enhance LR frames, folders of frames and 3-D TIFF stacks (each slice a frame) with the model "
        "in STATE_DIR, in overlapping blocks on Dask: local threads, a local cluster of processes or an existing "
        "Dask cluster. Outputs are named and computed as `refscope enhance` does (identical pixels); a re-run "
        "skips finished outputs and finished z-blocks of a stack (records in OUT/.refscope-batch/).",
        epilog=EXIT_CODES)
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log progress to stderr")
    p.add_argument("state_dir", metavar="STATE_DIR", help="state folder written by `refscope fit` / `train`")
    p.add_argument("inputs", metavar="INPUT", nargs="+", help="LR frame(s), folder(s) of frames, or 3-D TIFF stacks")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="output .tif for one input; otherwise a folder receiving <stem>_x<S>.tif")
    p.add_argument("--method", choices=("paired", "net", "best"), default=None,
                   help="paired library, trained network, or the winner in best.json (default: best once a "
                   "network exists, else paired)")
    p.add_argument("--self-ensemble", type=int, choices=ENSEMBLE_SIZES, default=1, metavar="N",
                   help="passes of the network over flipped and rotated copies of each frame, averaged: 1 (default), "
                   "2, 4 or 8 -- the same pixels as `refscope enhance --self-ensemble N`")
    p.add_argument("--scheduler", default="threads", metavar="S",
                   help="threads (default), processes (a local cluster) or tcp://HOST:PORT of a Dask scheduler")
    p.add_argument("--workers", type=_at_least(1), default=None, metavar="N",
                   help="local threads or processes (default: the number of cores)")
    p.add_argument("--block", type=_at_least(MIN_BLOCK_PX), default=DEFAULT_BLOCK_PX, metavar="LR_PX",
                   help=f"block side in LR px, >= {MIN_BLOCK_PX} (default {DEFAULT_BLOCK_PX}); rounded up to the "
                   "model's alignment")
    p.add_argument("--z-block", type=_at_least(1), default=None, metavar="N",
                   help="slices per resumable block of a stack (default: up to 64 MiB of output, at most 16)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-file lines")
    p.add_argument("--strict", action="store_true",
                   help="refuse (a failed input) a frame outside the model's domain -- pixel size off by more than "
                   "20 %%, another bit depth or detector; without it such a frame gets a warning")
    p.set_defaults(handler=cmd_batch)
    return p


def check_scheduler(scheduler: str, workers: int | None) -> None:
    """ValueError naming the option when ``--scheduler`` / ``--workers`` make no sense together."""
    if scheduler in ("threads", "processes"):
        return
    if "://" not in scheduler:
        raise ValueError(f"--scheduler: expected threads, processes or a Dask scheduler address such as "
                         f"tcp://HOST:8786, got {scheduler!r}")
    if workers is not None:
        raise ValueError("--workers: sets the local threads or processes; a Dask cluster has its own workers")


@contextmanager
def open_runner(scheduler: str, workers: int | None, *, progress: bool = True) -> Iterator[Any]:
    """The runner for ``--scheduler`` (see the module docstring); clusters started here are closed on exit."""
    from ..offline.batch_compute import ClientRunner, ThreadsRunner

    count = workers or os.cpu_count() or 1
    if scheduler == "threads":
        yield ThreadsRunner(count, progress=progress)
        return
    from distributed import Client, LocalCluster

    if scheduler == "processes":
        with LocalCluster(n_workers=count, threads_per_worker=1, processes=True, dashboard_address=":0",
                          silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            yield ClientRunner(client, progress=progress)
        return
    check_scheduler(scheduler, workers)
    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise RefscopeError(f"{scheduler}: cannot connect to the Dask scheduler ({exc})") from exc
    try:
        yield ClientRunner(client, progress=progress)
    finally:
        client.close()


def cmd_batch(args: argparse.Namespace) -> int:
    """``refscope batch``: plan, run and summarise; returns the exit code (see :data:`EXIT_CODES`)."""
    from ..offline.batch import BatchConfig, load_batch_model, load_safe_library, plan_jobs, run_batch
    from ..state.model_store import load_domain

    config = BatchConfig(block_px=args.block, z_block=args.z_block, quiet=args.quiet,
                         domain=load_domain(args.state_dir), strict=args.strict)
    check_scheduler(args.scheduler, args.workers)  # before the model export (a second or two)
    spec, label = load_batch_model(args.state_dir, args.method, self_ensemble=args.self_ensemble)
    jobs = plan_jobs(args.inputs, args.output, spec.scale)
    with open_runner(args.scheduler, args.workers, progress=not args.quiet) as runner:
        report = run_batch(spec, jobs, runner, config, label=label, safe=load_safe_library(args.state_dir, spec))
        where = runner.description
    rate = report.output_px / 1e6 / report.seconds if report.seconds > 0 else 0.0
    if not args.quiet or report.failed:
        print(f"refscope batch: {report.written} written, {report.skipped} already done, {report.failed} failed; "
              f"{report.zblocks_computed} frame/z-block(s) computed, {report.zblocks_reused} reused; "
              f"{report.output_px / 1e6:.1f} Mpx in {report.seconds:.1f} s ({rate:.2f} Mpx/s) on {where}")
    return report.exit_code

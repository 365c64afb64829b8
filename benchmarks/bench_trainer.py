"""Background training while the daemon serves: round time (from scratch and warm-started) and frame rate.

Session set-up (before the daemon starts): the real SEM pair07 (5000x LR / 12000x HR, factor 2.4, served at
S = 2) is registered, its overlap split like the learner does (left 9 of 3x4 subimages to learn from, the
right 3 held out), the paired library fitted on the training area and saved as the serving model, and the
pair stored as the session's pair (``pairs.npz``), exactly what the live learner leaves after one reference.

Then ``refscope daemon`` runs as a separate process in two phases, fed every ``--interval`` seconds with a
640x472 crop of the real LR frame (1280x944 output) written into the watched folder:

1. **baseline** (``--no-train``) for ``--baseline-s`` seconds;
2. **training**: the same daemon configuration with the background trainer on (``trainer.round_s`` =
   ``--round-s``, 1 PyTorch thread, nice 10): round 1 starts from scratch (LR-only bootstrap, then the pair),
   round 2 warm-starts from round 1's checkpoint. Frames keep coming until both rounds are recorded.

Reported: each round's wall time (training + validation on the held-out subimages + ONNX export; target for the
warm-started round <= 300 s), its held-out ΔPSNR vs the champion, whether it was promoted; frames in/out and
lost, output rate, end-to-end latency p50/p99 during training vs the baseline (ratios), written to the
``trainer`` section of ``benchmarks/RESULTS.md``.

    python benchmarks/bench_trainer.py                    # 60 s baseline, 2 rounds of 120 s
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tifffile
import zmq

from refscope.daemon.wire.control import ControlClient
from refscope.daemon.state.model_store import save_model
from refscope.daemon.state.net_store import SessionPairs, save_best, save_pairs
from refscope.daemon.wire.protocol import decode_enhanced
from refscope.daemon.images import read_image
from refscope.models.image_ops import as_gray_float
from refscope.models.pipeline import FitConfig, fit_library, register_reference, training_grids
from refscope.models.promotion import split_for_validation

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_daemon import percentile, start_daemon  # noqa: E402 - benchmarks/ is not a package
from results_md import write_section  # noqa: E402

DATA = Path(os.environ.get("REFSCOPE_SHARED_DATA", HERE.parent.parent / "shared" / "data")) / "sem_pairs"
PAIR = "pair07"
CROP = (472, 640)
TARGET_ROUND_S = 300.0


def prepare_state(state: Path) -> tuple[np.ndarray, float, dict]:
    """Register pair07, store it as the session's pair, save the library fitted on its training area."""
    pairs = {p["pair"]: p for p in json.loads((DATA / "pairs.json").read_text())}
    pair = pairs[PAIR]
    lr_img, hr_img = read_image(DATA / "raw" / pair["lr_file"]), read_image(DATA / "raw" / pair["hr_file"])
    lr, hr = as_gray_float(lr_img.data), as_gray_float(hr_img.data)
    factor = lr_img.pixel_size_nm / hr_img.pixel_size_nm
    config = FitConfig(scale=2)
    geometry = register_reference(lr, hr, factor=factor, config=config)
    box, hr_grid = training_grids(lr, hr, geometry, scale=2)
    (y0, y1), (x0, x1) = box
    split = split_for_validation(lr[y0:y1, x0:x1], hr_grid, scale=2)
    library = fit_library([split.train], config=config, geometries=[geometry])
    save_model(state, library, sources=[pair["lr_file"], pair["hr_file"]])
    session = SessionPairs(2)
    session.add(split.train, split.held_out, [pair["lr_file"], pair["hr_file"]])
    save_pairs(state, session)
    save_best(state, {"best": "paired", "validated": True, "scale": 2, "reason": "benchmark set-up"})
    info = {"pair": PAIR, "factor": factor, "overlap_lr": [y1 - y0, x1 - x0],
            "train_lr": list(split.train[0].shape), "held_out": len(split.held_out)}
    return np.asarray(lr_img.data), float(lr_img.pixel_size_nm), info


def run_phase(work: Path, name: str, lr: np.ndarray, lr_nm: float, args: argparse.Namespace, extra: tuple[str, ...],
              until) -> dict:
    """Feed crops of ``lr`` to a fresh daemon process until ``until(status, elapsed_s)`` is true."""
    watch, out = work / f"in-{name}", work / f"out-{name}"
    watch.mkdir(parents=True, exist_ok=True)
    log = work / f"daemon-{name}.log"
    proc, endpoints = start_daemon(watch, out, work / "state", "best", log, extra)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoints["pub"])
    arrivals: dict[float, float] = {}
    served: dict[str, int] = {}
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            if sub.poll(50):
                parts = sub.recv_multipart()
                if json.loads(parts[0]).get("role") == "enhanced":
                    frame = decode_enhanced(parts)
                    arrivals[round(frame.t, 6)] = time.time()
                    key = f"{frame.model} v{frame.model_version}"
                    served[key] = served.get(key, 0) + 1

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    rng = np.random.default_rng(0)
    closed: dict[float, float] = {}
    busy_flags: list[bool] = []  # per frame: a training round was running when it was written
    client = ControlClient(endpoints["control"], timeout_s=30)
    t0 = time.monotonic()
    i = 0
    status: dict = {}
    try:
        while True:
            due = t0 + i * args.interval
            while (wait := due - time.monotonic()) > 0:
                time.sleep(min(wait, 0.05))
            y = int(rng.integers(0, lr.shape[0] - CROP[0]))
            x = int(rng.integers(0, lr.shape[1] - CROP[1]))
            part = watch / f"frame_{i:05d}.tif.part"
            tifffile.imwrite(part, lr[y:y + CROP[0], x:x + CROP[1]], imagej=True,
                             resolution=(1e3 / lr_nm, 1e3 / lr_nm), metadata={"unit": "micron"})
            final = watch / f"frame_{i:05d}.tif"
            os.replace(part, final)
            closed[round(os.stat(final).st_mtime, 6)] = time.time()
            i += 1
            status = client.call("status")["status"]
            busy = bool((status.get("trainer") or {}).get("busy"))
            busy_flags.append(busy)
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited ({proc.returncode}); see {log}")
            if until(status, time.monotonic() - t0):
                break
        feed_s = time.monotonic() - t0
        end = time.monotonic() + 30
        while time.monotonic() < end and len(list(out.glob("*_x2.tif"))) < i:
            time.sleep(0.2)
        time.sleep(0.5)
        status = client.call("status")["status"]
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except Exception:  # noqa: BLE001
            proc.kill()
        stop.set()
        listener.join(timeout=5)
        sub.close(linger=0)
        context.term()
    latency = {k: arrivals[k] - v for k, v in closed.items() if k in arrivals}
    ordered = [latency.get(k) for k in sorted(closed)]
    during = [v for v, busy in zip(ordered, busy_flags) if v is not None and busy]
    every = [v for v in ordered if v is not None]
    return {"frames_in": i, "outputs": len(list(out.glob("*_x2.tif"))), "streamed": len(arrivals), "feed_s": feed_s,
            "latency_p50_s": percentile(every, 50), "latency_p99_s": percentile(every, 99),
            "busy_frames": len(during), "busy_p50_s": percentile(during, 50), "busy_p99_s": percentile(during, 99),
            "served": served, "status": status}


def render(setup: dict, base: dict, train: dict, args: argparse.Namespace, command: str) -> str:
    trainer = train["status"].get("trainer") or {}
    rounds = train.get("rounds", [])
    lines = [f"Command: `{command}` — {time.strftime('%Y-%m-%d %H:%M')}, {platform.node() or 'vm'} "
             f"({os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; the daemon and its "
             f"training process on the same cores).", "",
             f"Session: real {setup['pair']} (factor {setup['factor']:.2f}, served at S = 2), overlap "
             f"{setup['overlap_lr'][0]}x{setup['overlap_lr'][1]} LR px, training area "
             f"{setup['train_lr'][0]}x{setup['train_lr'][1]}, {setup['held_out']} held-out subimages; the library "
             f"fitted on the training area serves (champion). Frames: {CROP[1]}x{CROP[0]} crops of the real LR "
             f"frame every {args.interval:g} s (1280x944 output). Trainer: compact network, real-pairs, "
             f"round_s {args.round_s:g} s, 1 PyTorch thread, nice 10.", "",
             "| round | start | warm start | wall s (train + validate + export) | held-out ΔPSNR net / champion dB | "
             "outcome |", "|---|---|---|---|---|---|"]
    for r in rounds:
        cand = (r.get("candidate") or {}).get("d_psnr_db")
        champ = (r.get("champion") or {}).get("d_psnr_db")
        lines.append(f"| {r['round']} | {'from scratch (LR-only bootstrap 30 %)' if not r.get('warm_start') else ''}"
                     f" | {r.get('warm_start') or '–'} | {r.get('round_s', math.nan):.1f} | "
                     f"{cand if cand is None else f'{cand:+.3f}'} / {champ if champ is None else f'{champ:+.3f}'} | "
                     f"{r.get('status')}: {r.get('reason')} |")
    ratio99 = (train["busy_p99_s"] or math.nan) / (base["latency_p99_s"] or math.nan)
    ratio50 = (train["busy_p50_s"] or math.nan) / (base["latency_p50_s"] or math.nan)
    lost = train["frames_in"] - train["outputs"]
    rate_in = train["frames_in"] / train["feed_s"]
    lines += ["", "| phase | frames in | outputs (lost) | latency p50 / p99 s | while a round runs: frames, p50 / p99 s |",
              "|---|---|---|---|---|",
              f"| baseline (--no-train) | {base['frames_in']} | {base['outputs']} ({base['frames_in'] - base['outputs']}) "
              f"| {base['latency_p50_s']:.3f} / {base['latency_p99_s']:.3f} | – |",
              f"| training | {train['frames_in']} | {train['outputs']} ({lost}) | {train['latency_p50_s']:.3f} / "
              f"{train['latency_p99_s']:.3f} | {train['busy_frames']}, {train['busy_p50_s']:.3f} / "
              f"{train['busy_p99_s']:.3f} |", "",
              f"Served during training: {train['served']}. Trainer at the end: {trainer.get('rounds')} rounds, "
              f"{trainer.get('promotions')} promoted, {trainer.get('failures')} failed, serving "
              f"{(train['status'].get('model') or {}).get('served_by')}.", ""]
    warm = [r for r in rounds if r.get("warm_start")]
    warm_s = warm[0]["round_s"] if warm else math.nan
    lines.append(f"Targets: warm-started round {warm_s:.1f} s (target ≤ {TARGET_ROUND_S:.0f} s) "
                 f"{'met' if warm_s <= TARGET_ROUND_S else 'NOT met'}; frame rate kept: {train['outputs']} of "
                 f"{train['frames_in']} frames enhanced at {rate_in:.2f} frames/s in, {lost} lost "
                 f"({'met' if lost == 0 else 'NOT met'}); latency while training vs baseline: p50 x{ratio50:.2f}, "
                 f"p99 x{ratio99:.2f} (every frame still served within its 1 s slot: "
                 f"{'yes' if (train['busy_p99_s'] or 0) < args.interval else 'no'}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between frames (default 1)")
    parser.add_argument("--baseline-s", type=float, default=60.0, help="seconds of the no-training phase")
    parser.add_argument("--round-s", type=float, default=120.0, help="training seconds per round (default 120)")
    parser.add_argument("--limit-s", type=float, default=900.0, help="give up the training phase after this long")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    command = "python benchmarks/bench_trainer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="refscope-bench-trainer-") as tmp:
        work = Path(tmp)
        (work / "state").mkdir()
        lr, lr_nm, setup = prepare_state(work / "state")
        print(f"session prepared: {setup}", flush=True)
        base = run_phase(work, "baseline", lr, lr_nm, args, ("--no-train",),
                         lambda status, t: t >= args.baseline_s)
        print(f"baseline: {base['frames_in']} frames, p50 {base['latency_p50_s']:.3f} s", flush=True)
        rounds: list[dict] = []

        def done(status: dict, t: float) -> bool:
            last = (status.get("trainer") or {}).get("last")
            if last and (not rounds or rounds[-1].get("round") != last.get("round")):
                rounds.append(last)
                print(f"round {last.get('round')}: {last.get('status')} in {last.get('round_s')} s", flush=True)
            return len(rounds) >= 2 or t > args.limit_s

        train = run_phase(work, "training", lr, lr_nm, args,
                          ("--train-round-s", str(args.round_s)), done)
        train["rounds"] = rounds
    body = render(setup, base, train, args, command)
    print(body)
    if not args.no_write:
        write_section("trainer", "## Background training while serving (`benchmarks/bench_trainer.py`)\n\n" + body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

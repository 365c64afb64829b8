"""Real sessions replayed through a real daemon: what the operator sees, and what it costs (issue 18).

Every acquisition session of ``sem_pairs/raw`` (the 12 FEI frames grouped by acquisition date; a new session starts
after a pause of more than an hour: 2020-02-05 morning, 2020-02-13 evening, 2020-02-19 morning) is copied, in
acquisition order, into the watched folder of a ``refscope daemon`` subprocess with the **default configuration**
(background trainer on, memory budget 1500 MB) except ``model.scale`` = S, for S = 2 and 4, with ``--gap-s``
seconds between frames (:func:`refscope.daemon.ingest.replay.replay`; real gaps were 1-20 minutes). Per session:

* daemon exit codes while it ran (none expected), peak resident memory of the daemon *and its children* (trainer
  rounds, export helpers; /proc sampled every 0.2 s);
* latency per frame: copy into the watched folder -> enhanced TIFF in the output folder (p50, max); for the frames
  a learned model served (once a model serves), the latency the operator's viewer sees on the stream (the
  daemon's ``latency_s``: input file closed -> enhanced frame published) and the model's own time per frame
  (``model_s`` in the output's metadata);
* for each promoted model, promotion -> serving and reference arrival -> serving (from the daemon's log);
* **what the operator saw**: for every served frame whose field holds an HR reference that arrives *later*
  (``pairs.json`` pairs with ``hr_time`` > ``lr_time`` and factor >= S), the served output inside the HR field,
  scored against the HR resampled onto the S-times grid of the overlap (hand-checked geometry of ``pairs.json``),
  beside peers computed on the same LR crop: bicubic, a Gaussian blur of the bicubic output and scikit-image NLM on
  the LR (then bicubic), whose strengths are chosen on the left 75 % of the crop; every method is scored on the
  right 25 % after a per-image linear intensity fit: ΔPSNR, ΔSSIM over bicubic and the FRC resolution (1/7
  threshold, in output px). The served frame was made by whatever model served at that moment -- never one that
  saw that HR reference: the shipped priors saw every ``sem_pairs`` pair, so each session's daemon reads its priors
  (the prior served from the first frame, ``serve.prior``, and the trainer's warm start) from ``--priors
  DIR/<session date>/`` -- priors trained without that session's frames -- and runs without any otherwise
  (``REFSCOPE_PRIORS=none``).

Writes the ``session`` section of benchmarks/RESULTS.md and, with ``--json``, every figure.

    .venv/bin/python benchmarks/bench_session.py [--scales 2,4] [--sessions 2020-02-13] [--gap-s 20] [--json F]
        [--priors DIR]
        [--keep DIR] [--data DIR]   # DIR/raw: any sessions; DIR/pairs.json: optional
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import zmq
from scipy import ndimage

from refscope.daemon.ingest.replay import ReplayItem, plan_replay, replay
from refscope.daemon.wire.protocol import decode_enhanced, stream_role
from refscope.daemon.images.tiff_read import read_image
from refscope.models.image_ops import upsample_bicubic
from refscope.models.metrics import fit_intensity, frc, frc_resolution, psnr, ssim
from refscope.models.noise import estimate_noise_sigma
from refscope.models.registration import PairGeometry, overlap_box, resample_hr_to_lr_grid

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_md import write_section  # noqa: E402

DATA = Path(os.environ.get("REFSCOPE_SHARED_DATA", HERE.parent.parent / "shared" / "data")) / "sem_pairs"
REFSCOPE = Path(sys.executable).with_name("refscope")
SESSION_PAUSE_S = 3600.0
BLUR_SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # output px
NLM_H = (0.4, 0.6, 0.8, 1.0, 1.3)  # times the LR noise sigma
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")


# ---------------------------------------------------------------------------------------------------- sessions
def sessions(raw: Path) -> dict[str, list[ReplayItem]]:
    """The frames of ``raw`` in acquisition order, split where more than an hour passed; named by date."""
    out: dict[str, list[ReplayItem]] = {}
    current: list[ReplayItem] = []
    for item in plan_replay(raw):
        if current and item.t - current[-1].t > SESSION_PAUSE_S:
            out[datetime.fromtimestamp(current[0].t).strftime("%Y-%m-%d")] = current
            current = []
        current.append(item)
    if current:
        out[datetime.fromtimestamp(current[0].t).strftime("%Y-%m-%d")] = current
    return out


# ---------------------------------------------------------------------------------------------------- daemon run
def _tree_rss(pid: int) -> int:
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as handle:
                total += next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS:"))
            with open(f"/proc/{p}/task/{p}/children") as handle:
                todo += [int(c) for c in handle.read().split()]
        except (OSError, StopIteration, ValueError):
            pass
    return total


def _log_times(log: Path, pattern: str) -> list[tuple[float, re.Match]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        stamp, match = _LOG_TIME.match(line), re.search(pattern, line)
        if stamp and match:
            t = time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S")) + int(stamp.group(2)) / 1000
            found.append((t, match))
    return found


def run_session(name: str, items: list[ReplayItem], scale: int, gap_s: float, work: Path, settle_s: float,
                priors: Path | None = None) -> dict:
    root = work / f"{name}-x{scale}"
    watch, out, state = root / "watch", root / "out", root / "state"
    for folder in (watch, out):
        folder.mkdir(parents=True)
    log = root / "daemon.log"
    port = 26000 + 10 * scale
    command = [str(REFSCOPE), "daemon", "--watch", str(watch), "--out", str(out), "--state", str(state), "--scale",
               str(scale), "--control", f"tcp://127.0.0.1:{port}", "--pub", f"tcp://127.0.0.1:{port + 1}",
               "--events", f"tcp://127.0.0.1:{port + 2}"]
    # the shipped priors saw every sem_pairs pair: a session is served (prior from the first frame, the trainer's
    # warm start) only by priors trained without its frames (--priors DIR/<session>), else by none
    own = priors / name if priors is not None and (priors / name).is_dir() else None
    env = {**os.environ, "REFSCOPE_PRIORS": str(own) if own is not None else "none"}
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    peak, stop, exits = [0], threading.Event(), []

    seen: dict[str, float] = {}  # output name -> when it first appeared

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            for path in out.glob("*_x*.tif"):
                seen.setdefault(path.name, time.time())
            stop.wait(0.1)

    streamed: list[dict] = []  # enhanced frames as the operator's viewer gets them

    def watch_stream() -> None:
        context = zmq.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(f"tcp://127.0.0.1:{port + 1}")
        try:
            while not stop.is_set():
                if sub.poll(100):
                    parts = sub.recv_multipart()
                    if stream_role(parts) == "enhanced":
                        frame = decode_enhanced(parts)
                        streamed.append({"latency_s": frame.latency_s, "model": frame.model,
                                         "model_version": frame.model_version})
        finally:
            sub.close(linger=0)
            context.term()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    viewer = threading.Thread(target=watch_stream, daemon=True)
    viewer.start()
    copied: dict[str, float] = {}
    try:
        time.sleep(5.0)  # the daemon starts
        replay(items, watch, gap_s=gap_s, report=lambda item, target, waited: copied.__setitem__(item.path.name, time.time()))
        deadline = time.time() + settle_s
        while time.time() < deadline and proc.poll() is None:
            if len(seen) >= len(items) and time.time() - max(copied.values()) > 30.0:
                break
            time.sleep(0.1)
        if proc.poll() is not None:
            exits.append(proc.returncode)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    viewer.join(2.0)
    latency, model_s, learned = [], [], []
    for item in items:
        stem = item.path.stem
        output = out / f"{stem}_x{scale}.tif"
        if output.name in seen:
            latency.append(seen[output.name] - copied[item.path.name])
            extra = read_image(output).metadata.extra
            model_s.append(float(extra.get("model_s", float("nan"))))
            learned.append(str(extra.get("model_version", "0")) not in ("0", "None"))
    promoted = _log_times(log, r"promoted model (\d+)")
    served = {int(m.group(1)): t for t, m in _log_times(log, r"serving model v(\d+)")}
    paired = _log_times(log, r"paired (\S+) with")
    promotions = []
    for t, match in promoted:
        version = int(match.group(1))
        refs = [Path(m.group(1)).name for tp, m in paired if tp <= t]
        arrival = copied.get(refs[-1]) if refs else None
        if version in served:
            promotions.append({"version": version, "promotion_to_serving_s": served[version] - t,
                               "arrival_to_serving_s": None if arrival is None else served[version] - arrival})
    return {"session": name, "scale": scale, "frames": len(items), "enhanced": len(seen), "exits": exits,
            "clean_stop": proc.returncode == 0, "peak_rss_mb": peak[0] / 2**20, "latency_s": latency,
            "model_s": model_s, "learned": learned, "stream": streamed, "promotions": promotions, "out": str(out)}


# ---------------------------------------------------------------------------------------------------- scoring
def _split(width: int) -> int:
    return int(round(width * 0.75))


def _score(ref: np.ndarray, est: np.ndarray) -> tuple[float, float]:
    fitted = fit_intensity(est, ref)
    return psnr(ref, fitted), ssim(ref, fitted)


def _tuned(ref: np.ndarray, candidates: list[np.ndarray], cut: int) -> np.ndarray:
    """The candidate scoring best on the left part (columns < cut), never looking at the scored columns."""
    scores = [_score(ref[:, :cut], c[:, :cut])[0] for c in candidates]
    return candidates[int(np.argmax(scores))]


def score_operator_view(run: dict, items: list[ReplayItem], data: Path = DATA) -> list[dict]:
    """Scores of the served frames inside later references' fields; none without ``data/pairs.json``."""
    if not (data / "pairs.json").is_file():
        return []
    pairs = json.loads((data / "pairs.json").read_text())
    order = {item.path.name: i for i, item in enumerate(items)}
    scale, rows = run["scale"], []
    for pair in pairs:
        lr_name, hr_name = pair["lr_file"], pair["hr_file"]
        if lr_name not in order or hr_name not in order or order[hr_name] <= order[lr_name]:
            continue  # not in this session, or the HR came first (then a model may have learned from it)
        if pair["nominal_factor"] < scale * 0.999:
            continue  # the product refuses a reference not S times finer
        output = Path(run["out"]) / f"{Path(lr_name).stem}_x{scale}.tif"
        if not output.exists():
            rows.append({"pair": pair["pair"], "missing": True})
            continue
        lr = read_image(data / "raw" / lr_name).data.astype(np.float64)
        hr = read_image(data / "raw" / hr_name).data.astype(np.float64)
        geometry = PairGeometry(tuple(pair["offset_yx_lr_px"]), tuple(pair["fitted_factor_yx"]))
        (y0, y1), (x0, x1) = overlap_box(geometry, lr.shape, hr.shape)
        truth = resample_hr_to_lr_grid(hr, geometry, ((y0, y1), (x0, x1)), scale)
        served_image = read_image(output)
        served = served_image.data.astype(np.float64)[scale * y0:scale * y1, scale * x0:scale * x1]
        crop = lr[y0:y1, x0:x1]
        cut = _split(truth.shape[1])
        bicubic = upsample_bicubic(crop, scale)
        blur = _tuned(truth, [ndimage.gaussian_filter(bicubic, s) for s in BLUR_SIGMAS], cut)
        from skimage.restoration import denoise_nl_means

        sigma = estimate_noise_sigma(crop)
        span = float(np.ptp(crop)) or 1.0
        nlm = _tuned(truth, [upsample_bicubic(denoise_nl_means(crop / span, h=h * sigma / span, sigma=sigma / span,
                                                               patch_size=5, patch_distance=6, fast_mode=True) * span,
                                              scale) for h in NLM_H], cut)
        right = (slice(None), slice(cut, None))
        base_psnr, base_ssim = _score(truth[right], bicubic[right])
        row = {"pair": pair["pair"], "lr": lr_name[:6], "hr": hr_name[:6], "factor": round(pair["nominal_factor"], 2),
               "model": served_image.metadata.extra.get("model"),
               "model_version": served_image.metadata.extra.get("model_version"), "missing": False}
        for label, image in (("served", served), ("blur", blur), ("nlm", nlm), ("bicubic", bicubic)):
            p, s = _score(truth[right], image[right])
            curve = frc(fit_intensity(image[right], truth[right]), truth[right])
            res = frc_resolution(curve)
            row[label] = {"d_psnr_db": p - base_psnr, "d_ssim": s - base_ssim,
                          "frc_px": res.period_px if res.crossed else None}
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------- report
def _f(value, fmt: str = "+.2f") -> str:
    return "-" if value is None or (isinstance(value, float) and not np.isfinite(value)) else format(value, fmt)


def report(runs: list[dict], args: argparse.Namespace, seconds: float) -> str:
    lines = ["## Real sessions replayed through the daemon (`benchmarks/bench_session.py`)", "",
             f"Command: `.venv/bin/python benchmarks/bench_session.py --scales {args.scales} --gap-s {args.gap_s:g}"
             + (f" --sessions {args.sessions}" if args.sessions else "")
             + (f" --priors {args.priors}" if args.priors else "") + f"` — {seconds / 60:.1f} min on "
             f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
             f"{time.strftime('%Y-%m-%d')}. Default daemon configuration (trainer on, `serve.max_memory_mb` 1500) "
             f"except `model.scale`; frames copied {args.gap_s:g} s apart in acquisition order.", "",
             "| session | S | frames | enhanced | daemon exits | peak RSS daemon+children (MB) | file → output file "
             "p50 / max (s) | learned model: file → stream p50 / max (s) | learned model: model p50 (s) "
             "| promotion → serving (s) | reference arrival → serving (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        lat = run["latency_s"]
        mod = [m for m, by_model in zip(run["model_s"], run["learned"]) if by_model and np.isfinite(m)]
        live = [f["latency_s"] for f in run["stream"] if str(f["model_version"]) not in ("0", "None")]
        promo = ", ".join(_f(p["promotion_to_serving_s"], ".1f") for p in run["promotions"]) or "-"
        arrive = ", ".join(_f(p["arrival_to_serving_s"], ".1f") for p in run["promotions"]) or "-"
        lines.append(f"| {run['session']} | {run['scale']} | {run['frames']} | {run['enhanced']} | "
                     f"{len(run['exits'])}{'' if run['clean_stop'] else ' (unclean stop)'} | {run['peak_rss_mb']:.0f} | "
                     f"{_f(float(np.median(lat)) if lat else None, '.2f')} / {_f(max(lat) if lat else None, '.2f')} | "
                     f"{_f(float(np.median(live)) if live else None, '.2f')} / {_f(max(live) if live else None, '.2f')} "
                     f"({len(live)}) | {_f(float(np.median(mod)) if mod else None, '.2f')} | {promo} | {arrive} |")
    lines += ["", "What the operator saw: served frames scored inside the field of an HR reference that arrived later "
              "(right 25 % of the overlap; peers tuned on the left 75 %). ΔPSNR dB / ΔSSIM over bicubic; FRC "
              "resolution in output px (smaller is finer).", "",
              "| session | S | pair | LR → HR | x | served by | served | blur (tuned) | NLM (tuned) | FRC served / "
              "bicubic |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for row in run["scores"]:
            if row.get("missing"):
                lines.append(f"| {run['session']} | {run['scale']} | {row['pair']} | output missing | | | | | | |")
                continue
            cell = lambda k: f"{_f(row[k]['d_psnr_db'])} / {_f(row[k]['d_ssim'], '+.3f')}"  # noqa: E731
            lines.append(f"| {run['session']} | {run['scale']} | {row['pair']} | {row['lr']} → {row['hr']} | "
                         f"{row['factor']} | {row['model']} v{row['model_version']} | {cell('served')} | "
                         f"{cell('blur')} | {cell('nlm')} | {_f(row['served']['frc_px'], '.2f')} / "
                         f"{_f(row['bicubic']['frc_px'], '.2f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", default="2,4")
    parser.add_argument("--sessions", default="", help="comma-separated session dates (default: all)")
    parser.add_argument("--gap-s", type=float, default=20.0)
    parser.add_argument("--settle-s", type=float, default=240.0, help="longest wait after the last frame")
    parser.add_argument("--json", metavar="F")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--data", metavar="DIR", help="a folder with raw/ (the sessions' frames) and, optionally, "
                        "pairs.json (hand-checked pairs, for the operator-view scores); default: sem_pairs")
    parser.add_argument("--priors", metavar="DIR", type=Path,
                        help="DIR/<session date>/: priors trained without that session's frames (REFSCOPE_PRIORS "
                             "layout; benchmarks/train_prior.py --exclude); a session without one runs with none")
    parser.add_argument("--keep", metavar="DIR", help="replay into DIR and keep it (daemon logs, outputs, state)")
    args = parser.parse_args(argv)
    data = Path(args.data) if args.data else DATA
    if not (data / "raw").is_dir():
        print(f"real data not found at {data}/raw; nothing to replay", file=sys.stderr)
        return 2
    start = time.perf_counter()
    chosen = [s for s in args.sessions.split(",") if s]
    runs = []
    with tempfile.TemporaryDirectory(prefix="refscope-session-") as scratch:
        tmp = args.keep or scratch
        for name, items in sessions(data / "raw").items():
            if chosen and name not in chosen:
                continue
            for scale in (int(s) for s in args.scales.split(",")):
                print(f"session {name} ({len(items)} frames) at x{scale} ...", flush=True)
                run = run_session(name, items, scale, args.gap_s, Path(tmp), args.settle_s, args.priors)
                run["scores"] = score_operator_view(run, items, data)
                print(json.dumps({k: v for k, v in run.items() if k not in ("scores",)}, default=str), flush=True)
                runs.append(run)
    text = report(runs, args, time.perf_counter() - start)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1, default=str))
    if not args.no_write:
        write_section("session", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

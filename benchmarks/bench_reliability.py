"""Long versions of the reliability tests (issue 8): soak, faults and fuzzing against ``refscope daemon``.

The checks are those of ``tests/daemon/test_soak.py``, ``test_faults.py`` and ``test_fuzz.py`` (imported from
there), run for longer:

* **soak** (``--soak-s``, ``--soak-interval``): the simulated microscope writes LR frames into the watched folder
  of a daemon process (resuming a learned model) for the whole time; lost output frames, resident memory after
  warm-up and at the end, latency p50/p99 of the first and second half (:func:`test_soak.run_soak`);
* **faults** (``--fault-trials``): the daemon process is SIGKILLed over and over on the same folders while frames
  and HR references (a new specimen each time, so models get promoted) arrive -- every other trial at a random
  moment, the others at one of the points of :data:`test_faults.KILL_HOOK` in turn (library being saved,
  library committed, before the version record, halfway through an output TIFF, after an output but before
  its catalogue record). After each kill: the killed daemon's children are gone and the state folder loads;
  each trial starts by restarting on what the previous kill left. At the end a clean run must give every LR
  frame exactly one complete output, a sound catalogue and no temporary file
  (:func:`test_faults.check_restarted`);
* **fuzzing** (``--fuzz-examples``, ``--fuzz-sends``, ``--fuzz-files``): that many hypothesis-generated mutated
  messages through the decoder and mutated TIFFs through the reader, then refused messages over a real PUSH
  socket and mutated files into the watched folder of a running daemon (each counted under its reason, the
  daemon still enhancing afterwards).

    python benchmarks/bench_reliability.py                     # 600 s soak, 20 kills, 5000 + 5000 fuzz inputs
    python benchmarks/bench_reliability.py --soak-s 60 --fault-trials 4 --fuzz-examples 300 --no-write

Figures go to the ``reliability`` section of ``benchmarks/RESULTS.md`` (unless ``--no-write``). Not a test: the
timings depend on the machine and on whatever else runs on it (the load average is recorded).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, seed, settings

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "daemon"))
from results_md import write_section  # noqa: E402 - benchmarks/ and tests/ are not packages
from test_faults import (HR_NM, KILL_HOOK, LR_NM, LR_SHAPE, check_restarted, hook_environment,  # noqa: E402
                         leftover_processes, save_initial_model, temporary_files, wait_children_gone)
from test_fuzz import (base_tiffs, check_message, check_still_enhances, check_tiff, drop_mutated_files,  # noqa: E402
                       messages, send_and_check, tiff_mutations, zmq_daemon_and_pusher)
from test_restart import DaemonProcess, put_frame  # noqa: E402
from test_soak import LATENCY_RATIO_LIMIT, LATENCY_SLACK_S, RSS_GROWTH_LIMIT, check_soak, run_soak  # noqa: E402

from refscope.daemon.learn.learner import load_initial  # noqa: E402
from refscope.models.synthetic import make_pair  # noqa: E402

SECTION = "reliability"
KILL_POINTS = ("library_saving", "library_saved", "version_record", "output_partial", "output_uncatalogued")
SPECIMEN_KINDS = ("particles", "fibres", "cells")  # the initial model learned "mixed"
assert all(f'"{p}"' in KILL_HOOK for p in KILL_POINTS)


# ------------------------------------------------------------------------------------------------- soak


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    print(f"soak: {args.soak_s:g} s at one {args.soak_interval:g}-s frame interval", flush=True)
    result = run_soak(work / "soak", duration_s=args.soak_s, interval_s=args.soak_interval, progress=True)
    try:
        check_soak(result)
        verdict = "passed"
    except AssertionError as exc:
        verdict = f"FAILED: {exc}"
    first, second = result.latency_halves()
    lat = result.status.get("latency", {})
    return {"frames": result.frames, "duration_s": result.duration_s, "interval_s": result.interval_s,
            "lr_shape": list(result.lr_shape), "outputs": result.outputs, "lost": result.lost, "extra": result.extra,
            "enhanced_in_catalogue": result.enhanced_in_catalogue, "warm_frames": result.warm_frames,
            "rss_warm_mib": result.warm_rss / 1024, "rss_final_mib": result.final_rss / 1024,
            "rss_max_mib": max(k for _, k in result.rss) / 1024, "rss_growth": result.rss_growth,
            "latency_first": first, "latency_second": second, "drain_s": result.drain_s,
            "model_p50_s": lat.get("model_p50_s"), "processing_p50_s": lat.get("processing_p50_s"),
            "model": f"{result.status.get('model', {}).get('served_by')} v{result.status.get('model_version')}",
            "backend": result.status.get("model", {}).get("backend"),
            "errors_by_reason": result.status.get("errors_by_reason"), "exit_code": result.exit_code,
            "verdict": verdict}


# ----------------------------------------------------------------------------------------------- faults


def faults(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    watch, out, staging = work / "faults" / "in", work / "faults" / "out", work / "faults" / "staging"
    for folder in (watch, staging):
        folder.mkdir(parents=True)
    state = out / ".refscope-state"
    save_initial_model(state)
    log = work / "faults" / "daemon.log"
    rng = np.random.default_rng(args.seed)
    lr_names: list[str] = []
    trials: list[dict[str, Any]] = []
    saved_env = {k: os.environ.get(k) for k in ("PYTHONPATH", "REFSCOPE_TEST_KILL_MARK", "REFSCOPE_TEST_KILL_AT")}
    try:
        for trial in range(args.fault_trials):
            mode = "random" if trial % 2 == 0 else KILL_POINTS[(trial // 2) % len(KILL_POINTS)]
            mark = work / "faults" / f"killed_{trial:03d}"
            os.environ.update(hook_environment(work / "faults" / "hook", mark))
            if mode == "random":
                os.environ.pop("REFSCOPE_TEST_KILL_AT", None)
            else:
                os.environ["REFSCOPE_TEST_KILL_AT"] = mode
            record: dict[str, Any] = {"trial": trial, "mode": mode}
            start = time.monotonic()
            daemon = DaemonProcess(watch, out, log)  # the restart on what the previous kill left
            record["restart_s"] = time.monotonic() - start
            record["version_at_start"] = daemon.status()["model_version"]
            kind = SPECIMEN_KINDS[trial % len(SPECIMEN_KINDS)]  # another kind each time: models get promoted
            specimen = make_pair(rng=np.random.default_rng(1000 + trial), lr_shape=LR_SHAPE, factor=2.0,
                                 lr_pixel_size_nm=LR_NM, kind=kind)
            deadline = float(rng.uniform(0.5, 6.0)) if mode == "random" else 15.0
            t0 = time.monotonic()
            i = 0
            while daemon.proc.poll() is None and time.monotonic() - t0 < deadline:
                if i == 3:
                    put_frame(watch, staging, f"ref_{trial:03d}.tif", specimen.hr, HR_NM)
                else:
                    name = f"t{trial:03d}_frame_{i:03d}.tif"
                    put_frame(watch, staging, name, specimen.lr + rng.normal(0, 0.003, LR_SHAPE), LR_NM)
                    lr_names.append(name)
                i += 1
                time.sleep(0.15)
            if daemon.proc.poll() is None:
                daemon.proc.send_signal(signal.SIGKILL)
                record["killed_at"] = "random moment" if mode == "random" else f"timer ({mode} not reached)"
            else:
                record["killed_at"] = mark.read_text() if mark.exists() else f"exit {daemon.proc.returncode}"
            record["kill_s"] = time.monotonic() - t0
            daemon.kill()
            record["exit"] = daemon.proc.returncode
            try:
                wait_children_gone(mark)
                record["children_left"] = 0
            except AssertionError:
                record["children_left"] = len(leftover_processes(mark))
            record["temporary_files"] = len(temporary_files(out, state))  # removed by the next start
            try:
                record["version_after"] = load_initial(state)[1]
                record["state_loads"] = True
            except Exception as exc:  # noqa: BLE001 - what the benchmark reports
                record["state_loads"] = False
                record["error"] = f"{type(exc).__name__}: {exc}"
            trials.append(record)
            print(f"  fault trial {trial}: {record}", flush=True)
        for name in ("REFSCOPE_TEST_KILL_AT",):
            os.environ.pop(name, None)
        start = time.monotonic()
        daemon = DaemonProcess(watch, out, log)
        final_restart_s = time.monotonic() - start
        expected = {n.replace(".tif", "_x2.tif") for n in lr_names}
        wait = time.monotonic()
        while not expected <= {p.name for p in out.glob("*.tif")} and time.monotonic() - wait < 180:
            time.sleep(0.5)
        status = daemon.status()
        code = daemon.terminate()
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        version, _ = check_restarted(watch, out, state, lr_names)
        final = "passed"
    except AssertionError as exc:
        version, final = None, f"FAILED: {exc}"
    survived = sum(1 for t in trials if t["state_loads"] and t["children_left"] == 0)
    return {"trials": trials, "survived": survived, "lr_frames": len(lr_names),
            "outputs": len(list(out.glob("*.tif"))), "final_check": final, "final_exit_code": code,
            "final_version": version, "final_restart_s": final_restart_s,
            "final_errors_by_reason": status["errors_by_reason"],
            "replaced": status["publish"]["folder"]["replaced"] if status["publish"]["folder"] else None}


# ---------------------------------------------------------------------------------------------- fuzzing


def fuzz(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    quiet = logging.getLogger("tifffile")
    quiet.setLevel(logging.CRITICAL)
    options = settings(max_examples=args.fuzz_examples, database=None, deadline=None,
                       suppress_health_check=list(HealthCheck))
    decoded: Counter[str] = Counter()
    sendable = []

    @options
    @seed(args.seed)
    @given(message=messages())
    def decoder(message: Any) -> None:
        outcome = check_message(message)
        decoded[outcome] += 1
        if message.parts and (message.bad_pixels or outcome != "decoded") and len(sendable) < args.fuzz_sends:
            sendable.append(message)

    started = time.monotonic()
    decoder()
    decoder_s = time.monotonic() - started
    print(f"  decoder: {sum(decoded.values())} messages, {dict(decoded)}", flush=True)

    bases = base_tiffs(work / "fuzz" / "bases")
    read: Counter[str] = Counter()
    mutant = work / "fuzz" / "mutant.tif"

    @options
    @seed(args.seed)
    @given(mutation=tiff_mutations)
    def reader(mutation: Any) -> None:
        mutant.write_bytes(mutation.apply(bases[mutation.base]))
        read[check_tiff(mutant)] += 1

    started = time.monotonic()
    reader()
    reader_s = time.monotonic() - started
    print(f"  reader: {sum(read.values())} files, {dict(read)}", flush=True)

    sent: Counter[str] = Counter()
    with zmq_daemon_and_pusher(work / "fuzz" / "zmq") as (daemon, push):
        for start in range(0, len(sendable), 25):
            sent += send_and_check(daemon, push, sendable[start:start + 25])
        check_still_enhances(daemon, push)
        zmq_status = daemon.status()
    print(f"  daemon over ZMQ: {len(sendable)} messages, counted {dict(sent)}", flush=True)
    (work / "fuzz" / "files").mkdir()
    files = drop_mutated_files(work / "fuzz" / "files", bases, args.fuzz_files, seed=args.seed)
    print(f"  daemon folder: {args.fuzz_files} files, {dict(files)}", flush=True)
    return {"decoder": dict(decoded), "decoder_s": decoder_s, "reader": dict(read), "reader_s": reader_s,
            "sent": len(sendable), "counted": dict(sent), "daemon_running": zmq_status.running,
            "files": args.fuzz_files, "file_outcomes": dict(files)}


# ---------------------------------------------------------------------------------------------- report


def _machine() -> str:
    return (f"{platform.system()} {platform.release()}, {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"Python {platform.python_version()}")


def render(figures: dict[str, Any], command: str) -> str:
    lines = ["## Reliability: soak, faults, fuzzing (issue 8, `bench_reliability.py`)", "",
             f"`{command}` — {_machine()}; {figures['date']}; load average {figures['load_before']} at the start, "
             f"{figures['load_after']} at the end (the machine is shared with other work); "
             f"{figures['wall_s'] / 60:.1f} min in all. Short versions: `tests/daemon/test_soak.py`, `test_faults.py`, "
             "`test_fuzz.py`.", ""]
    s = figures.get("soak")
    if s:
        f, l2 = s["latency_first"], s["latency_second"]
        lines += [
            f"**Soak** — the simulated microscope writes a {s['lr_shape'][1]}x{s['lr_shape'][0]} LR frame every "
            f"{s['interval_s']:g} s into the watched folder of a `refscope daemon` process serving {s['model']} "
            f"({s['backend']} backend) for {s['duration_s']:g} s: {s['verdict']}.", "",
            "| figure | value | target |", "|---|---|---|",
            f"| LR frames / outputs / enhanced in the catalogue | {s['frames']} / {s['outputs']} / "
            f"{s['enhanced_in_catalogue']} | all equal |",
            f"| lost output frames / duplicates | {s['lost']} / {s['extra']} | 0 / 0 |",
            f"| daemon RSS after warm-up ({s['duration_s'] / 4:g} s) → end (max) | {s['rss_warm_mib']:.0f} → "
            f"{s['rss_final_mib']:.0f} MiB ({s['rss_max_mib']:.0f} MiB) | |",
            f"| RSS growth after warm-up | {100 * s['rss_growth']:+.2f} % | < {100 * RSS_GROWTH_LIMIT:g} % |",
            f"| latency (file closed → output written) p50 / p99 / max, 1st half after warm-up | {f['p50']:.3f} / "
            f"{f['p99']:.3f} / {f['max']:.3f} s | |",
            f"| same, 2nd half | {l2['p50']:.3f} / {l2['p99']:.3f} / {l2['max']:.3f} s | p99 ≤ "
            f"{LATENCY_RATIO_LIMIT:g}× 1st half (+{LATENCY_SLACK_S:g} s) |",
            f"| model time p50 / daemon processing p50 (last {min(300, s['frames'])} frames) | "
            f"{s['model_p50_s']:.3f} / {s['processing_p50_s']:.3f} s | < {s['interval_s']:g} s (sustainable) |",
            f"| errors by reason / exit code | {s['errors_by_reason'] or '{}'} / {s['exit_code']} | {{}} / 0 |", ""]
    fa = figures.get("faults")
    if fa:
        by_mode: dict[str, Counter[str]] = {}
        for t in fa["trials"]:
            c = by_mode.setdefault(t["mode"], Counter())
            c["trials"] += 1
            c["survived"] += int(t["state_loads"] and t["children_left"] == 0)
            c["hook_reached"] += int(t["killed_at"] == t["mode"])
            c["temporary_files"] += t["temporary_files"]
        versions = [t.get("version_after") for t in fa["trials"]]
        lines += [
            f"**Faults** — {len(fa['trials'])} SIGKILLs of the daemon process on the same folders while LR frames and "
            "an HR reference of a new specimen arrive (models get promoted); every other kill at a random moment "
            "0.5–6 s into the trial, the others at the kill points of `tests/daemon/test_faults.py` in turn (a point "
            "that is not reached within 15 s -- no promotion in that trial -- ends in a SIGKILL at 15 s). After "
            "each kill the state folder must load and the daemon's children be gone; each trial begins with the "
            "restart. Final clean run: " + fa["final_check"] + ".", "",
            "| kill | trials | point reached | survived (state loads, no orphan) | temp files left (removed at restart) |",
            "|---|---|---|---|---|"]
        for mode, c in by_mode.items():
            reached = "—" if mode == "random" else str(c["hook_reached"])
            lines.append(f"| {mode} | {c['trials']} | {reached} | {c['survived']} | {c['temporary_files']} |")
        restarts = [t["restart_s"] for t in fa["trials"][1:]]
        lines += ["",
                  f"Faults survived: {fa['survived']} of {len(fa['trials'])}. Model version after each kill: "
                  f"{versions}. Restart to `ready`: median {np.median(restarts) if restarts else float('nan'):.1f} s. "
                  f"Final run: {fa['lr_frames']} LR frames, {fa['outputs']} outputs (exactly one each, complete, "
                  f"{fa['replaced']} replaced in place), catalogue integrity ok, no temporary file, model v"
                  f"{fa['final_version']}, errors {fa['final_errors_by_reason'] or '{}'}, exit code "
                  f"{fa['final_exit_code']}.", ""]
    fz = figures.get("fuzz")
    if fz:
        def fmt(counts: dict[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))

        lines += [
            "**Fuzzing** — hypothesis-generated inputs (seed " + str(figures["seed"]) + "); every input refused "
            "with the reason its mutation calls for, or decoded/read consistently; nothing else raised.", "",
            "| target | inputs tried | outcomes |", "|---|---|---|",
            f"| `decode_frame` (mutated v1 messages) | {sum(fz['decoder'].values())} ({fz['decoder_s']:.0f} s) | "
            f"{fmt(fz['decoder'])} |",
            f"| `read_image` (mutated TIFFs: bit flips, truncation, header bytes) | {sum(fz['reader'].values())} "
            f"({fz['reader_s']:.0f} s) | {fmt(fz['reader'])} |",
            f"| running daemon, PUSH socket (refused / NaN-pixel messages) | {fz['sent']} | counted exactly: "
            f"{fmt(fz['counted'])}; still running and enhancing afterwards |",
            f"| running daemon, watched folder (mutated TIFFs) | {fz['files']} | {fmt(fz['file_outcomes'])}; each "
            "counted, none modified, a valid file enhanced afterwards |", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--soak-s", type=float, default=600.0, help="soak duration, seconds (0: skip)")
    parser.add_argument("--soak-interval", type=float, default=0.25, help="seconds between soak frames")
    parser.add_argument("--fault-trials", type=int, default=20, help="SIGKILLs (0: skip)")
    parser.add_argument("--fuzz-examples", type=int, default=5000, help="decoder and reader inputs each (0: skip)")
    parser.add_argument("--fuzz-sends", type=int, default=500, help="refused messages sent to a running daemon")
    parser.add_argument("--fuzz-files", type=int, default=200, help="mutated files dropped into a watched folder")
    parser.add_argument("--seed", type=int, default=8, help="seed of the fault loop and of the fuzzing")
    parser.add_argument("--workdir", help="keep the folders here (default: a temporary folder, removed)")
    parser.add_argument("--json", help="also write the figures as JSON")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    command = "python benchmarks/bench_reliability.py " + " ".join(argv if argv is not None else sys.argv[1:])
    figures: dict[str, Any] = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                               "load_before": ", ".join(f"{v:.1f}" for v in os.getloadavg()), "seed": args.seed}
    started = time.monotonic()
    failed = False
    with tempfile.TemporaryDirectory(prefix="refscope-reliability-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name, run, wanted in (("soak", soak, args.soak_s > 0), ("faults", faults, args.fault_trials > 0),
                                  ("fuzz", fuzz, args.fuzz_examples > 0)):
            if not wanted:
                continue
            try:
                figures[name] = run(args, work)
            except Exception:  # noqa: BLE001 - report what broke, keep the other parts' figures
                traceback.print_exc()
                failed = True
    figures["wall_s"] = time.monotonic() - started
    figures["load_after"] = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    section = render(figures, command.strip())
    print(section)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    if not args.no_write and not failed:
        write_section(SECTION, section)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

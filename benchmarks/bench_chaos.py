"""Chaos: a real daemon killed again and again while real frames flow, hostile inputs arrive and the output folder
goes away for a while -- nothing may be lost (issue 13).

A ``refscope daemon`` subprocess (default configuration, background trainer on, except ``--scale 2`` and a ZMQ
input endpoint) watches a folder into which a feeder copies, atomically and in a loop, the real 1536x1024 FEI
frames of the 2020-02-13 session (``sem_pairs/raw``): the 1200x live frames under new names every
``--period-s`` seconds, and every 15th copy the session's 5000x reference of the live frames just copied (each a
new reference to learn). Mixed in: a truncated TIFF, a text file named ``.tif``, a valid frame under a name that is not UTF-8, and on
the ZMQ endpoint messages with pixel sizes of 1e300 / 1e-300 / 5e-324 m, an absurd shape and garbage bytes.
The daemon's process group is SIGKILLed ``--kills`` times at random moments (uniform 2-12 s after each start, so
during serving, learning, promotion, export and output writes alike) and restarted with the same state folder;
once, the output folder is replaced by a file for 10 s (a share that went away: writes fail; as root a chmod would
not stop them). Finally the feeder stops, the daemon runs until every frame is accounted for (or ``--settle-s``)
and stops cleanly.

Reported: frames in (valid live frames copied), outputs written, outputs lost (a valid live frame with neither an
output nor a refusal recorded in the catalogue), references copied / learned (catalogue ``learned`` outcome of each)
/ lost, hostile inputs sent and refused, restarts, daemon exits not caused by a kill (must be 0), peak resident
memory of the daemon and its children against ``serve.max_memory_mb``.

    .venv/bin/python benchmarks/bench_chaos.py [--kills 20] [--seed 0] [--period-s 1.4] [--json F] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from refscope.daemon.state.catalogue import Catalogue
from refscope.daemon.wire.control import ControlClient, ControlError
from refscope.daemon.wire.protocol import encode_frame
from refscope.daemon.config.budget import DEFAULT_MAX_MEMORY_MB

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_session import DATA, REFSCOPE, _tree_rss  # noqa: E402
from results_md import write_section  # noqa: E402

LIVE = ("de7d85__NiO_DCs_5KV_1200x_ETD_HV_s5.0_13.4WD_028.tif", "3b9a58__NiO_DCs_5KV_1200x_ETD_HV_s5.0_13.5WD_032.tif")
REFERENCES = ("c2da01__NiO_DC_5000x_D.tif", "96336e__NiO_DC_5000x_E.tif")  # of the first and the second live frame
PORT = 27300
REFERENCE_EVERY = 15
"""Every 15th copy is a reference (every ~20 s at the default period, so the learner keeps up between kills)."""


class Feeder(threading.Thread):
    """Copies frames into the watched folder (temp name + rename) until stopped; remembers what it copied."""

    def __init__(self, watch: Path, staging: Path, period_s: float, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.watch, self.staging, self.period_s, self.rng = watch, staging, period_s, rng
        self.live: list[str] = []        # valid live frames (names as the file system has them)
        self.references: list[str] = []
        self.hostile_files: list[str] = []
        self.stop = threading.Event()
        self.count = 0

    def _copy(self, source: Path, name: str | bytes) -> str:
        temp = self.staging / f"copy-{self.count}.tmp"
        shutil.copyfile(source, temp)
        target = os.path.join(os.fsencode(self.watch), name) if isinstance(name, bytes) else str(self.watch / name)
        os.replace(temp, target)
        return os.fsdecode(target)

    def run(self) -> None:
        raw = DATA / "raw"
        while not self.stop.is_set():
            self.count += 1
            n = self.count
            pair = (n // REFERENCE_EVERY) % 2
            if n % REFERENCE_EVERY == 0:  # the reference of the live frames just copied
                pair = ((n - 1) // REFERENCE_EVERY) % 2
                self.references.append(self._copy(raw / REFERENCES[pair], f"ref_{n:05d}_{REFERENCES[pair]}"))
            elif n % 23 == 0:  # a valid live frame under a name that is not UTF-8
                self.live.append(self._copy(raw / LIVE[pair], b"live_%05d_\xff.tif" % n))
            elif n % 29 == 0:
                path = self.watch / f"text_{n:05d}.tif"
                path.write_text("not an image\n" * 10)
                self.hostile_files.append(str(path))
            elif n % 31 == 0:
                temp = self.staging / "cut.tmp"
                temp.write_bytes((raw / LIVE[pair]).read_bytes()[:50_000])
                os.replace(temp, self.watch / f"cut_{n:05d}.tif")
                self.hostile_files.append(str(self.watch / f"cut_{n:05d}.tif"))
            else:
                self.live.append(self._copy(raw / LIVE[pair], f"live_{n:05d}.tif"))
            self.stop.wait(self.period_s)


def hostile_messages(rng: random.Random) -> list[list[bytes]]:
    """ZMQ messages no daemon may die of."""
    pixels = np.zeros((64, 64), np.uint16)
    header, buffer = encode_frame(pixels, seq=1, pixel_size_m=1e-8, role="lr")
    out = []
    for field, value in (("pixel_size_m", 1e300), ("pixel_size_m", 1e-300), ("pixel_size_m", 5e-324),
                         ("shape", [10**6, 10**6]), ("seq", -1), ("t", 1e308)):
        doc = {**json.loads(header), field: value}
        out.append([json.dumps(doc).encode(), buffer])
    out.append([bytes(rng.getrandbits(8) for _ in range(64))])
    out.append([b"{}", b""])
    return out


def start_daemon(root: Path, log) -> subprocess.Popen:  # noqa: ANN001
    command = [str(REFSCOPE), "daemon", "--watch", str(root / "watch"), "--out", str(root / "out"), "--state",
               str(root / "state"), "--scale", "2", "--zmq", f"tcp://127.0.0.1:{PORT + 3}",
               "--control", f"tcp://127.0.0.1:{PORT}", "--pub", f"tcp://127.0.0.1:{PORT + 1}",
               "--events", f"tcp://127.0.0.1:{PORT + 2}"]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def status_of() -> dict | None:
    try:
        with ControlClient(f"tcp://127.0.0.1:{PORT}", timeout_s=5.0) as client:
            reply = client.request("status")
        return reply.get("status") if reply.get("ok") else None
    except (ControlError, zmq.ZMQError, OSError):
        return None


def account(root: Path, feeder: Feeder) -> dict:
    """Every copied frame's fate from the output folder and the catalogue."""
    out = root / "out"
    written = {p.name for p in out.iterdir()} if out.is_dir() else set()
    lost, refused, refs_lost, refs = [], [], [], {"learned": 0, "rejected": 0, "quarantined": 0}
    with Catalogue.in_state_dir(root / "state") as catalogue:
        for name in feeder.live:
            record = catalogue.frame(name)  # its output's name is in the catalogue (names are sanitised)
            if record is not None and record.status == "enhanced" and record.output_path is not None \
                    and Path(record.output_path).name in written:
                continue
            if record is not None and record.status == "rejected":
                refused.append(name)
            else:
                lost.append(name)
        for name in feeder.references:
            info = os.stat(name)
            outcome = catalogue.learned(name, info.st_size, info.st_mtime)
            if outcome is None:
                refs_lost.append(name)
            else:
                refs[outcome] = refs.get(outcome, 0) + 1
    return {"written": len([n for n in written if n.endswith("_x2.tif")]), "lost": lost, "refused": refused,
            "references_lost": refs_lost, "references": refs}


def run(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="refscope-chaos-"))
    for name in ("watch", "out", "staging"):
        (work / name).mkdir()
    log = open(work / "daemon.log", "ab")
    feeder = Feeder(work / "watch", work / "staging", args.period_s, rng)
    peak, restarts, own_exits, hostile_sent = 0, 0, [], 0
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDHWM, 100)
    push.connect(f"tcp://127.0.0.1:{PORT + 3}")
    messages = hostile_messages(rng)
    folder_gone_at = rng.randrange(max(1, args.kills // 3), max(2, args.kills - 1))
    start = time.perf_counter()
    proc = start_daemon(work, log)
    feeder.start()
    try:
        for kill in range(args.kills + 1):
            lifetime = rng.uniform(2.0, 12.0) if kill < args.kills else args.settle_s
            if kill == folder_gone_at:  # the share goes away for 10 s while the daemon runs: a file in its place
                lifetime = 16.0  # (a daemon *started* without its output folder refuses its configuration)
                up = time.monotonic() + 30.0
                while status_of() is None and time.monotonic() < up:  # so: once it is up
                    time.sleep(0.2)
                hidden = work / "out.away"
                os.replace(work / "out", hidden)
                (work / "out").write_text("the output share is gone")
                threading.Timer(10.0, lambda: ((work / "out").unlink(), os.replace(hidden, work / "out"))).start()
            deadline = time.monotonic() + lifetime
            if kill == args.kills:
                feeder.stop.set()
                feeder.join()
            while time.monotonic() < deadline:
                peak = max(peak, _tree_rss(proc.pid))
                if proc.poll() is not None:
                    own_exits.append(proc.returncode)
                    proc = start_daemon(work, log)
                    restarts += 1
                if rng.random() < 0.05 and messages:
                    push.send_multipart(messages[hostile_sent % len(messages)], flags=zmq.NOBLOCK)
                    hostile_sent += 1
                if kill == args.kills:  # settling: done when every frame has an output or a refusal
                    status = status_of()
                    if status and status["queues"]["serve"] == 0 and not status["learner"]["busy"] \
                            and not status["learner"]["queued"] and status["publish"]["folder"].get("retry_waiting", 0) == 0:
                        fate = account(work, feeder)
                        if not fate["lost"] and not fate["references_lost"]:
                            break
                time.sleep(0.2)
            if kill < args.kills:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                proc = start_daemon(work, log)
                restarts += 1
        final = status_of() or {}
    finally:
        feeder.stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        push.close(linger=0)
        context.term()
        log.close()
    clean_exit = proc.returncode == 0
    fate = account(work, feeder)
    result = {
        "kills": args.kills, "seed": args.seed, "restarts": restarts, "own_exits": own_exits, "clean_stop": clean_exit,
        "frames_in": len(feeder.live), "outputs_written": fate["written"], "outputs_lost": len(fate["lost"]),
        "lost": fate["lost"][:10], "frames_refused": len(fate["refused"]),
        "references_in": len(feeder.references), "references": fate["references"],
        "references_lost": len(fate["references_lost"]), "hostile_files": len(feeder.hostile_files),
        "hostile_messages": hostile_sent, "errors_by_reason": final.get("errors_by_reason"),
        "peak_rss_mb": round(peak / 2**20), "budget_mb": DEFAULT_MAX_MEMORY_MB,
        "seconds": round(time.perf_counter() - start, 1), "work": str(work),
    }
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def report(r: dict, command: str) -> str:
    refs = r["references"]
    return "\n".join([
        "## Chaos: kills, hostile inputs, a vanished output folder (`benchmarks/bench_chaos.py`, issue 13)", "",
        f"Command: `{command}` — {r['seconds'] / 60:.1f} min on {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}. A real daemon (default configuration, trainer on, "
        "`--scale 2`, a ZMQ input) fed real 1536x1024 FEI frames of the 2020-02-13 session and its 5000x references "
        "(every 15th copy), SIGKILLed at random moments and restarted; the output folder replaced by a file for 10 s "
        "once; hostile files and ZMQ messages mixed in.", "",
        "| kills (restarts) | daemon exits not caused by a kill | frames in | outputs written | outputs lost | frames "
        "refused | references in | learned / rejected / quarantined | references lost | hostile files / messages "
        "| peak RSS daemon+children (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['kills']} ({r['restarts']}) | {len(r['own_exits'])} | {r['frames_in']} | {r['outputs_written']} | "
        f"{r['outputs_lost']} | {r['frames_refused']} | {r['references_in']} | {refs.get('learned', 0)} / "
        f"{refs.get('rejected', 0)} / {refs.get('quarantined', 0)} | {r['references_lost']} | {r['hostile_files']} / "
        f"{r['hostile_messages']} | {r['peak_rss_mb']} (budget {r['budget_mb']}) |", "",
        f"Errors counted by the daemon at the end (after its last restart): `{json.dumps(r['errors_by_reason'])}`. "
        f"Clean final stop: {r['clean_stop']}.",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--period-s", type=float, default=1.4, help="seconds between copied files (the daemon serves "
                        "a 1536x1024 frame at x2 in about 1 s on 2 cores)")
    parser.add_argument("--settle-s", type=float, default=240.0, help="longest wait for the last frames")
    parser.add_argument("--quick", action="store_true", help="3 kills (a try)")
    parser.add_argument("--json", metavar="F")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (daemon log, state, outputs)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.kills = 3
    if not (DATA / "raw").is_dir():
        print(f"real data not found at {DATA}", file=sys.stderr)
        return 2
    result = run(args)
    command = ".venv/bin/python benchmarks/bench_chaos.py" + (f" --kills {args.kills}" if args.kills != 20 else "") + (
        f" --seed {args.seed}" if args.seed else "")
    text = report(result, command)
    print(json.dumps(result, indent=1))
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if not args.no_write:
        write_section("chaos", text)
    ok = result["outputs_lost"] == 0 and result["references_lost"] == 0 and not result["own_exits"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

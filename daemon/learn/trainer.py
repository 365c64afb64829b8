"""The background trainer: fine-tunes a network on the session's pairs in a separate process, round by round.

:class:`BackgroundTrainer` is a stoppable supervisor thread inside the daemon. It

* keeps the session's pairs: the learner hands over each pair it learns from (:meth:`add_pair`: training area +
  held-out subimages), saved atomically in ``<state_dir>/pairs.npz`` (:mod:`refscope.daemon.state.net_store`);
* runs **rounds** (:mod:`refscope.daemon.learn.train_round`) in a child process (``multiprocessing`` *spawn*, lower priority,
  ``trainer.threads`` PyTorch threads), so serving never stalls on PyTorch and a crash of the training code
  cannot take the daemon down: a round that exits without a result (crash, kill, out of memory) or runs
  past its deadline (``2 * round_s + 300`` s) is counted, logged, recorded and retried after ``retry_s``
  (doubling with each further failure in a row, up to 32x);
* after ``rounds_per_pair`` rounds without a new pair, waits for the next pair;
* on a round's win (the network beat the champion and bicubic on held-out reference area), checks that the
  champion did not change meanwhile, then hands the ONNX network to ``on_promoted`` (which serves it) and
  records ``best.json``; otherwise the champion keeps serving and the reason is recorded.

Every round goes into the catalogue (``models`` table: kind ``"net"``, scores, strategy, pairs used, promoted or
not, why) and is announced as event ``net_round``; a promotion also as ``model_promoted`` with ``kind: "net"``.
The round counter and network version survive restarts in ``<state_dir>/trainer/trainer.json``; the
checkpoint the next round warm-starts from in ``<state_dir>/trainer/net.*``.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from refscope.models.promotion import HeldOutSplit

from ..atomic import atomic_write_json
from ..state.catalogue import Catalogue
from ..config import TrainerConfig
from ..errors import RefscopeError
from ..state.net_store import SessionPairs, finite_json, load_pairs, load_served, save_pairs
from .train_round import CHECKPOINT_DIR, RoundSpec, round_process_main
from ..wire.status import TrainerStatus, TrainingRound
from ..worker import Worker, supervised

__all__ = ["BackgroundTrainer", "TRAINER_FILE"]

TRAINER_FILE = "trainer.json"
"""``<state_dir>/trainer/trainer.json``: rounds run, network version, failures, last result."""

_log = logging.getLogger("refscope.trainer")

HOLD_WINDOW_S = 60.0
"""Window over which the share of time training is held for serving is measured, seconds."""
MAX_HELD_SHARE = 0.75
"""Training is held at most this share of the time (serving still preempts it: ``trainer.idle_priority``)."""

OnNetPromoted = Callable[[bytes, Any, int, TrainingRound], None]
"""``on_promoted(onnx_bytes, manifest, net_version, result)``: serve the network (trainer thread)."""


class BackgroundTrainer(Worker):
    """Supervises training rounds (see the module docstring). ``start()``, feed :meth:`add_pair`, ``stop()``.

    Args:
        config: the ``[trainer]`` section.
        state_dir: the daemon's state folder.
        scale: output scale S of the session.
        champion: returns ``(kind, token)`` of what serves now: kind ``"paired"``, ``"net"`` or ``"bicubic"``,
            token any value that changes when the served model changes.
        on_promoted: serves a promoted network (must return quickly; an exception is logged and the network is
            recorded as not served).
        catalogue, events: where rounds are recorded / announced (``emit(type, payload)``), or None.
        target: the process entry point (tests substitute one); default :func:`round_process_main`.
        poll_s: how often the supervisor checks stop requests and the child, seconds.
    """

    def __init__(self, config: TrainerConfig, *, state_dir: Path, scale: int,
                 champion: Callable[[], tuple[str, Any]], on_promoted: OnNetPromoted,
                 catalogue: Catalogue | None = None, events: Any = None,
                 target: Callable[..., None] = round_process_main, poll_s: float = 0.2) -> None:
        self.config = config
        self._state_dir = Path(state_dir)
        self._scale = int(scale)
        self._champion = champion
        self._on_promoted = on_promoted
        self._catalogue = catalogue
        self._events = events
        self._target = target
        self._poll_s = float(poll_s)
        super().__init__("refscope-trainer", poll_interval_s=1.0)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._process: Any = None
        self._held = False  # serving holds the training process stopped (see hold())
        self._held_since = 0.0
        self._held_s = 0.0  # seconds held so far (all rounds)
        self._window_start = time.monotonic()  # the recent window hold() counts held time in
        self._window_held = 0.0
        self._skipped_holds = 0
        stored = load_pairs(self._state_dir)
        if stored is not None and stored.scale != self._scale:
            raise RefscopeError(f"{self._state_dir}: the stored pairs are x{stored.scale} but the session is "
                                f"x{self._scale}; use another state folder")
        self._pairs = stored or SessionPairs(self._scale)
        saved = self._read_state()
        self._rounds = int(saved.get("rounds", 0))
        self.net_version = int(saved.get("net_version", 0))
        self._failures = int(saved.get("failures", 0))
        self._promotions = int(saved.get("promotions", 0))
        last = saved.get("last")
        self._last: TrainingRound | None = TrainingRound.from_dict(last) if isinstance(last, Mapping) else None
        self._rounds_left = self.config.rounds_per_pair if self._pairs.train else 0
        self._running_since: float | None = None
        self._retry_at = 0.0
        self._failed_in_row = 0

    # ------------------------------------------------------------------------------------------ public API

    def start(self) -> None:
        """Start the supervisor thread."""
        super().start()
        _log.info("background trainer started: %s x%d, %s, %.0f s rounds, %d stored pair(s)", self.config.network,
                  self._scale, self.config.strategy, self.config.round_s, len(self._pairs.train))

    def add_pair(self, split: HeldOutSplit, sources: list[str]) -> None:
        """Store a learned pair (learner thread) and schedule ``rounds_per_pair`` rounds."""
        with self._lock:
            self._pairs.add(split.train, split.held_out, sources)
            save_pairs(self._state_dir, self._pairs)
            self._rounds_left = self.config.rounds_per_pair
            self._wake.notify_all()

    def check(self) -> None:
        """Re-raise a failure of the supervisor thread itself (not of a round) on the caller's thread."""
        if self._error is not None:
            raise RefscopeError(f"trainer failed: {type(self._error).__name__}: {self._error}") from self._error

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop the supervisor; a round in progress is terminated (its checkpoint is the previous round's).
        Returns whether the thread ended; re-raises a failure of the supervisor (:meth:`check`)."""
        self._stop.set()
        with self._lock:
            self._wake.notify_all()
        return super().stop(timeout)

    def hold(self, held: bool) -> None:
        """Stop (``SIGSTOP``) the training process while serving needs the CPU, continue it (``SIGCONT``) after.

        With ``trainer.pause_while_serving`` the daemon holds training while a frame is served or waits to be:
        on a 2-core PC a training process, even at ``SCHED_IDLE``, slowed a 1536x1024 frame at x4 from 1.1 s to
        1.5-2.5 s. Training then runs in the gaps between frames; a round's deadline does not count held time.
        Idempotent; a round started while held starts stopped. Where signals cannot stop a process (not POSIX),
        nothing happens. Training is never starved: once it has been held for more than :data:`MAX_HELD_SHARE` of
        the last :data:`HOLD_WINDOW_S` seconds (frames arriving faster than they are served), a hold is skipped.
        """
        if not self.config.pause_while_serving or not hasattr(signal, "SIGSTOP"):
            return
        with self._lock:
            if held == self._held:
                return
            now = time.monotonic()
            if now - self._window_start > HOLD_WINDOW_S:  # a new window: what was held in the last one is the start
                self._window_held = min(self._window_held, MAX_HELD_SHARE * HOLD_WINDOW_S)
                self._window_start = now - HOLD_WINDOW_S / 2
                self._window_held *= 0.5
            if held and self._window_held > MAX_HELD_SHARE * max(now - self._window_start, HOLD_WINDOW_S / 4):
                self._skipped_holds += 1
                return  # serving has had most of the CPU lately: let training have its share
            self._held = held
            if held:
                self._held_since = now
            else:
                self._held_s += now - self._held_since
                self._window_held += now - self._held_since
            process = self._process
            if process is not None and process.pid is not None:
                self._signal(process, signal.SIGSTOP if held else signal.SIGCONT)

    @staticmethod
    def _signal(process: Any, signum: int) -> None:
        try:
            os.kill(process.pid, signum)
        except (OSError, ProcessLookupError):  # it has just ended
            pass

    def _held_total(self) -> float:
        """Seconds training has been held so far, the current hold included."""
        with self._lock:
            return self._held_s + (time.monotonic() - self._held_since if self._held else 0.0)

    @property
    def child_pid(self) -> int | None:
        """Process id of the round in progress, or None."""
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def status(self) -> TrainerStatus:
        """The trainer's part of the daemon's status (any thread): rounds, promotions, failures, the stored pairs,
        whether a round runs now and the latest round's result (see :class:`TrainerStatus`)."""
        with self._lock:
            running = None if self._running_since is None else time.monotonic() - self._running_since
            return TrainerStatus(
                enabled=True, busy=running is not None, running_s=running, rounds=self._rounds,
                promotions=self._promotions, failures=self._failures, net_version=self.net_version,
                pairs=len(self._pairs.train), held_out=len(self._pairs.held_out), rounds_left=self._rounds_left,
                network=self.config.network, strategy=self.config.strategy, round_s=self.config.round_s,
                last=self._last, held_s=round(self._held_s, 1), holds_skipped=self._skipped_holds)

    # ------------------------------------------------------------------------------------------ worker

    def poll_once(self, timeout: float) -> None:
        """One turn of the supervisor: wait up to ``timeout`` s for a round to be due, then run it (a failed
        round is counted and retried later, never the end of the trainer)."""
        spec = self._next_round(timeout)
        if spec is not None:
            supervised(lambda: self._run_round(spec), worker="trainer", item=f"round {spec.round_index}",
                       count=self._round_failed, reason="round_failed", logger=_log)

    def _next_round(self, timeout: float) -> RoundSpec | None:
        """Wait until a round is due; returns its spec (None when stopping or still waiting)."""
        with self._lock:
            due = (self._rounds_left > 0 and bool(self._pairs.train) and time.monotonic() >= self._retry_at)
            if not due:
                self._wake.wait(timeout=timeout)
                return None
            self._rounds_left -= 1
            self._rounds += 1
            self._running_since = time.monotonic()  # busy from now until the round's result is recorded
            kind, _ = self._champion()
            cfg = self.config
            return RoundSpec(state_dir=str(self._state_dir), round_index=self._rounds, network=cfg.network,
                             strategy=cfg.strategy, budget_s=cfg.round_s, bootstrap_fraction=cfg.bootstrap_fraction,
                             champion=kind, margin_db=cfg.margin_db, net_version=self.net_version + 1,
                             threads=cfg.threads, nice=cfg.nice, idle=cfg.idle_priority, prior=cfg.prior,
                             companion=cfg.companion, baseline_share=cfg.baseline_share)

    def _run_round(self, spec: RoundSpec) -> None:
        try:
            self._supervise(spec)
        finally:
            with self._lock:
                self._running_since = None

    def _supervise(self, spec: RoundSpec) -> None:
        _, token = self._champion()
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe(duplex=False)
        process = context.Process(target=self._target, args=(spec, child_end, logging.getLogger().level),
                                  name=f"refscope-train-{spec.round_index}", daemon=True)
        deadline = time.monotonic() + 2 * spec.budget_s + 300.0
        self._process = process
        _log.info("round %d: training %s for %.0f s (champion: %s)", spec.round_index, spec.network, spec.budget_s,
                  spec.champion)
        result: TrainingRound | None = None
        late = False
        try:
            with self._lock:  # started stopped while serving holds training
                process.start()
                if self._held:
                    self._signal(process, signal.SIGSTOP)
        except OSError as exc:  # no process (out of memory, process limit): a failed round, not a failed daemon
            parent_end.close()
            child_end.close()
            self._process = None
            self._finish(spec, TrainingRound(round=spec.round_index, status="failed",
                                             reason=f"training process could not start ({exc})"), token)
            return
        held_before = self._held_total()
        try:
            child_end.close()
            while result is None and not self._stop.is_set():
                if parent_end.poll(self._poll_s):
                    try:
                        received = parent_end.recv()
                        result = received if isinstance(received, TrainingRound) else TrainingRound.from_dict(received)
                    except (EOFError, OSError):  # the child died before sending
                        break
                elif not process.is_alive():
                    break
                elif time.monotonic() - (self._held_total() - held_before) > deadline:
                    late = True
                    break
        finally:
            self._end(process)
            parent_end.close()
            self._process = None
        if self._stop.is_set() and result is None:
            return
        if result is None:
            why = "ran past its deadline" if late else f"exited with code {process.exitcode} without a result"
            result = TrainingRound(round=spec.round_index, status="failed", reason=f"training process {why}")
        self._finish(spec, result, token)

    @staticmethod
    def _end(process: Any) -> None:
        if process.is_alive():
            if hasattr(signal, "SIGCONT"):  # a held (stopped) process would not act on SIGTERM
                BackgroundTrainer._signal(process, signal.SIGCONT)
            process.terminate()
            process.join(5.0)
        if process.is_alive():  # pragma: no cover - ignored SIGTERM
            process.kill()
        process.join(5.0)

    def _round_failed(self, reason: str, message: str) -> None:
        """A round failed in the supervisor itself (a bug, a bad result): counted, retried with back-off."""
        with self._lock:
            self._failures += 1
            self._failed_in_row += 1
            self._retry_at = time.monotonic() + self.config.retry_s * min(2 ** (self._failed_in_row - 1), 32)
            self._last = TrainingRound(status="failed", reason=f"{reason}: {message}")

    def _finish(self, spec: RoundSpec, result: TrainingRound, token: Any) -> None:
        if result.status == "promoted":
            kind, now = self._champion()
            if now != token:
                result = replace(result, status="kept",
                                 reason=f"{result.reason}; but the serving model changed during the round "
                                        f"(now {kind}), so it is validated again next round")
                with self._lock:
                    self._rounds_left = max(self._rounds_left, 1)
            else:
                result = self._serve(spec, result)
        with self._lock:
            if result.status == "failed":
                self._failures += 1
                self._failed_in_row += 1
                backoff = self.config.retry_s * min(2 ** (self._failed_in_row - 1), 32)
                self._retry_at = time.monotonic() + backoff
                self._rounds_left = max(self._rounds_left, 1)
            else:
                self._failed_in_row = 0
            if result.status == "promoted":
                self._promotions += 1
                self.net_version = spec.net_version
            self._last = result
        self._write_state()
        self._record(spec, result)

    def _serve(self, spec: RoundSpec, result: TrainingRound) -> TrainingRound:
        try:
            model_bytes, manifest = load_served(self._state_dir)
            self._on_promoted(model_bytes, manifest, spec.net_version, result)
        except Exception as exc:  # noqa: BLE001 - the champion keeps serving; recorded below
            _log.error("round %d: network v%d won but could not be served (%s: %s)", spec.round_index,
                       spec.net_version, type(exc).__name__, exc)
            return replace(result, status="failed", reason=f"won but could not be served: {exc}")
        return result

    # ------------------------------------------------------------------------------------------ records

    def _record(self, spec: RoundSpec, result: TrainingRound) -> None:
        status = result.status
        level = logging.WARNING if status == "failed" else logging.INFO
        cand = (result.candidate or {}).get("d_psnr_db")
        champ = (result.champion or {}).get("d_psnr_db")
        _log.log(level, "round %d %s: %s (candidate %s dB, %s %s dB)", spec.round_index, status, result.reason,
                 "n/a" if cand is None else f"{cand:+.3f}", spec.champion, "0" if champ is None else f"{champ:+.3f}")
        payload = {"round": spec.round_index, "status": status, "reason": result.reason,
                   "candidate_delta_db": cand, "champion_delta_db": champ, "champion": spec.champion,
                   "net_version": spec.net_version if status == "promoted" else self.net_version,
                   "round_s": result.round_s, "pairs": result.pairs, "trained": result.trained,
                   "companion_weight": result.companion_weight, "baseline_share": result.baseline_share}
        if self._catalogue is not None and status != "no_data":
            scores = {"candidate": result.candidate, "champion": result.champion,
                      "champion_kind": spec.champion, "strategy": spec.strategy, "network": spec.network,
                      "budget_s": spec.budget_s, "steps": result.steps, "warm_start": result.warm_start,
                      "pairs": result.pairs, "held_out": result.held_out, "round": spec.round_index,
                      "sources": result.sources, "trained": result.trained,
                      "companion_weight": result.companion_weight, "baseline_share": result.baseline_share}
            try:
                self._catalogue.record_model(f"net-{spec.net_version}", kind="net", method="net", library_size=None,
                                             scores=finite_json(scores), promoted=status == "promoted",
                                             reason=str(result.reason))
                self._catalogue.record_event("net_round", finite_json(payload))
            except Exception as exc:  # noqa: BLE001 - a catalogue hiccup must not stop training
                _log.error("round %d not recorded in the catalogue: %s", spec.round_index, exc)
        if self._events is not None:
            self._events.emit("net_round", finite_json(payload))
            if status == "promoted":
                self._events.emit("model_promoted", finite_json({
                    "kind": "net", "version": spec.net_version, "held_out_delta_db": cand,
                    "serving_delta_db": champ, "reason": result.reason}))

    def _state_path(self) -> Path:
        return self._state_dir / CHECKPOINT_DIR / TRAINER_FILE

    def _read_state(self) -> dict[str, Any]:
        path = self._state_path()
        if not path.is_file():
            return {}
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            return document if isinstance(document, dict) else {}
        except (OSError, ValueError) as exc:
            _log.warning("%s unreadable (%s); counting rounds from 0", path, exc)
            return {}

    def _write_state(self) -> None:
        with self._lock:
            document = {"rounds": self._rounds, "net_version": self.net_version, "failures": self._failures,
                        "promotions": self._promotions, "last": None if self._last is None else self._last.to_dict(),
                        "config": asdict(self.config)}
        path = self._state_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, finite_json(document))

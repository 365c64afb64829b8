"""Learn from HR references while the daemon keeps serving: a worker thread that pairs, fits and promotes.

For each HR reference handed to :meth:`Learner.submit_reference` the worker

1. pairs it with a recent LR frame (:func:`~refscope.daemon.learn.pairing.pair_reference`; the recent LR frames are
   those fed to :meth:`Learner.note_lr` *before* the reference was submitted);
2. splits the pair's overlap into a training area and held-out subimages
   (:func:`~refscope.models.promotion.split_for_validation`);
3. fits a candidate by extending the serving model's library with the training area (incremental: no
   re-clustering; the first reference builds a library);
4. scores the serving model (bicubic when there is none) and the candidate on the held-out subimages
   (ΔPSNR over bicubic, dB, reconstruction method ``"paired"``) and applies
   :func:`~refscope.models.promotion.decide_promotion`;
5. on promotion: saves the candidate atomically in ``state_dir`` (``library.npz``/``library.json`` by
   :func:`~refscope.daemon.state.model_store.save_model`, then ``model_version.json``), records it, emits
   ``model_promoted`` and calls ``on_promoted`` (which must return quickly: serving swaps models, the learner
   never waits for it). On rejection the candidate is discarded and the serving model stays the champion.

After each reference (learned from or not) the optional ``on_scored`` callback receives a :class:`ReferenceOutcome`:
the serving model's held-out ΔPSNR on the new reference *before* learning from it (a true out-of-sample score of
the model that was serving), the candidate's, and the LR region learned from (the quality monitor's training
profile).

Every pair learned from is recorded (``catalogue.record_pair``, event ``pair_learned``). A reference that cannot
be used (no matching LR frame, mismatched scale, too little texture...) is counted by reason, logged on
``refscope.learner``, recorded and announced as event ``pair_rejected``; the worker carries on. Only a failure
of the learner itself (a bug, an exception from ``on_promoted``, the catalogue failing) stops the worker; it is
stored and re-raised on the owner's thread by :meth:`Learner.check` and :meth:`Learner.stop`.

Queue policy: at most ``queue_size`` references wait; when a new one arrives on a full queue, the *oldest*
waiting reference is dropped (counted in ``references_dropped`` and logged), so the newest references are kept.

Restart: :func:`load_initial` reads the saved model and its version back (missing state: bicubic, version 0).
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from refscope.models.baseline import SafeBaseline
from refscope.models.errors import RefscopeModelError
from refscope.models.pipeline import FitConfig, FittedModel, enhance, fit_library
from refscope.models.promotion import (HeldOutSplit, PromotionDecision, decide_promotion, held_out_delta_psnr,
                                       split_for_validation)
from refscope.models.safe_blend import choose_safe_baseline

from ..atomic import atomic_write_json
from ..state.catalogue import Catalogue
from ..errors import RefscopeError, StateError
from ..frames import Frame
from ..state.model_domain import ModelDomain
from ..state.model_store import MODEL_KIND, MODEL_STATE_NAME, load_model, save_model, save_served_baseline
from .pairing import PairingError, PairingHooks, PairResult, RecentFrames, pair_reference
from ..publish import EventPublisher
from ..state.store import has_state, state_sha256
from ..wire.status import LearnerStatus
from ..worker import Worker, lower_priority, supervised

__all__ = [
    "LEARNER_LOGGER",
    "MODEL_VERSION_FILE",
    "LEARN_METHOD",
    "LearnerStatus",
    "ReferenceOutcome",
    "Learner",
    "load_initial",
]

LEARNER_LOGGER = "refscope.learner"
MODEL_VERSION_FILE = "model_version.json"
"""``<state_dir>/model_version.json``: version, held-out ΔPSNR and checksum of the saved model."""
LEARN_METHOD = "paired"
"""Reconstruction method used to judge candidates and champions."""

_log = logging.getLogger(LEARNER_LOGGER)

OnPromoted = Callable[..., None]
"""``on_promoted(model, version, decision)``, and ``on_promoted(model, version, decision, serve=False)`` for a
library promoted behind a serving network (see :class:`Learner`'s ``served_net``)."""


@dataclass(frozen=True, eq=False)
class ReferenceOutcome:
    """What became of one HR reference (passed to ``on_scored``).

    Attributes:
        hr_source: the reference's ``Frame.source``.
        lr_source: the LR frame it was paired with, or None (not paired).
        lr_region: (h, w) float64 LR pixels of the pair's overlap (LR frame units), or None (not paired).
        serving_delta_db: held-out ΔPSNR over bicubic (dB) of the model serving *before* this reference
            (0.0 for bicubic): its out-of-sample score on new ground truth; None when not measured.
        candidate_delta_db: the candidate's held-out ΔPSNR (dB), or None.
        promoted: the candidate now serves.
        version: the serving model's version after the decision.
        reason: the promotion decision, or why the reference could not be used.
    """

    hr_source: str
    lr_source: str | None
    lr_region: np.ndarray | None
    serving_delta_db: float | None
    candidate_delta_db: float | None
    promoted: bool
    version: int
    reason: str


OnScored = Callable[[ReferenceOutcome], None]


YIELD_TO_SERVING_S = 5.0
"""Longest a reference waits for serving to become idle before it is learned anyway (at lower priority), seconds.
A zoom-series frame is a reference and a live frame at once: it is served first (1.1 s at x4 on 2 cores alone,
2.3 s while the learner fitted it in the same process)."""


def _db(value: float) -> str:
    """``value`` dB for a reason text (``+0.42 dB``)."""
    return f"{value:+.2f} dB"


def _finite(value: float | None) -> float | None:
    """JSON has no NaN/inf: non-finite values become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _predictor(model: FittedModel) -> Callable[[np.ndarray], np.ndarray]:
    return lambda lr: enhance(lr, model, method=LEARN_METHOD)


class Learner(Worker):
    """The learning worker (see the module docstring). ``start()``, feed it, ``check()`` now and then, ``stop()``.

    Args:
        fit_config: scale, library and registration options (frozen).
        state_dir: folder where promoted models are saved (created if missing).
        catalogue: where pairs, models and events are recorded, or None.
        events: where events are published (anything with ``emit(type, payload)``), or None.
        on_promoted: called on the worker thread as ``on_promoted(model, version, decision)`` after a model is
            saved; must return quickly. An exception from it stops the worker (re-raised by :meth:`check`).
        hooks: which LR frames may contain an HR reference; default :class:`PairingHooks`.
        initial_model: the model serving now (e.g. from :func:`load_initial`), None for bicubic.
        initial_version: its version (0: bicubic).
        queue_size: references waiting at most (>= 1); beyond it the oldest waiting one is dropped.
        margin_db: a candidate must beat the serving model, bicubic and the reference's safe baseline by more
            than this, dB.
        recent_lr: LR frames remembered for pairing (>= 1).
        recent_lr_bytes: pixels those frames may hold, bytes (the oldest fall out first); None: no byte bound.
        serving_busy: returns True while a frame is being served or waits to be; a reference taken from the queue
            waits until it returns False (at most :data:`YIELD_TO_SERVING_S`), so that the frame the operator
            looks at is not slowed down by learning. None: never wait.
        poll_interval_s: how often the idle worker checks for stop, seconds.
        on_scored: called on the worker thread with a :class:`ReferenceOutcome` after each reference (after
            ``on_promoted``); must return quickly. An exception from it stops the worker like ``on_promoted``'s.
        on_learned: called on the worker thread as ``on_learned(split, sources)`` for every pair learned from
            (promoted or not): its training area and held-out subimages
            (:class:`~refscope.models.promotion.HeldOutSplit`) and ``[lr_source, hr_source]`` -- the background
            trainer's data. An exception from it stops the worker like ``on_promoted``'s.
        served_net: returns the network that serves now as a predictor (LR -> S-times output): a trained network or
            the shipped prior served before anything was learned; None while no network is the champion
            (:meth:`~refscope.daemon.serve.engine.ServingEngine.champion_net`). A library that would be promoted
            is then also measured against that network on the reference's held-out area;
            where the network scores at least as well, the library is promoted as the session's library (saved,
            versioned, the support of the safe blend) but the network keeps serving: ``on_promoted(...,
            serve=False)``. None: a promoted library always serves.
        on_baseline: called on the worker thread as ``on_baseline(baseline)`` when no model serves yet and the
            reference's safe baseline (:class:`~refscope.models.baseline.SafeBaseline`) beat the candidate,
            bicubic and the serving prior (``served_net``) on its held-out area: serve it until a model is promoted
            (recorded first in the state folder, :func:`~refscope.daemon.state.model_store.save_served_baseline`).
            Must return quickly; an
            exception from it stops the worker like ``on_promoted``'s. None: bicubic keeps serving.
    """

    def __init__(
        self,
        *,
        fit_config: FitConfig,
        state_dir: Path,
        catalogue: Catalogue | None,
        events: EventPublisher | None,
        on_promoted: OnPromoted,
        hooks: PairingHooks | None = None,
        initial_model: FittedModel | None = None,
        initial_version: int = 0,
        queue_size: int = 4,
        margin_db: float = 0.0,
        recent_lr: int = 16,
        recent_lr_bytes: int | None = None,
        serving_busy: Callable[[], bool] | None = None,
        poll_interval_s: float = 0.1,
        on_scored: OnScored | None = None,
        on_learned: Callable[[HeldOutSplit, list[str]], None] | None = None,
        on_baseline: Callable[[SafeBaseline], None] | None = None,
        served_net: Callable[[], Callable[[np.ndarray], np.ndarray] | None] | None = None,
    ) -> None:
        if int(queue_size) != queue_size or queue_size < 1:
            raise ValueError(f"learner: queue_size must be an integer >= 1, got {queue_size!r}")
        if isinstance(initial_version, bool) or int(initial_version) != initial_version or initial_version < 0:
            raise ValueError(f"learner: initial_version must be an integer >= 0, got {initial_version!r}")
        if not math.isfinite(margin_db):
            raise ValueError(f"learner: margin_db must be a finite number of dB, got {margin_db!r}")
        if not poll_interval_s > 0:
            raise ValueError(f"learner: poll_interval_s must be > 0 seconds, got {poll_interval_s!r}")
        if initial_model is not None:
            patch = fit_config.library_config.patch_size
            if initial_model.scale != fit_config.scale or initial_model.library.patch_size != patch:
                raise ValueError(
                    f"learner: the initial model (scale {initial_model.scale}, patch size "
                    f"{initial_model.library.patch_size}) does not match the fit configuration (scale "
                    f"{fit_config.scale}, patch size {patch}); start without it or change the configuration")
        self._config = fit_config
        self._state_dir = Path(state_dir)
        self._catalogue = catalogue
        self._events = events
        self._on_promoted = on_promoted
        self._on_scored = on_scored
        self._on_learned = on_learned
        self._on_baseline = on_baseline
        self._served_net = served_net
        self._last_reference_db: float | None = None
        self._hooks = hooks if hooks is not None else PairingHooks()
        self._margin_db = float(margin_db)
        self._queue_size = int(queue_size)
        self._poll_s = float(poll_interval_s)
        self._recent = RecentFrames(recent_lr, recent_lr_bytes)
        self._serving_busy = serving_busy

        super().__init__("refscope-learner", poll_interval_s=self._poll_s)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[tuple[Frame, list[Frame]]] = deque()

        self._model = initial_model
        self._version = int(initial_version)
        self._delta_db: float | None = 0.0 if initial_model is None else None
        self._pairs = 0
        self._rejected: dict[str, int] = {}
        self._dropped = 0
        self._busy = False
        self._promoted = 0
        self._not_promoted = 0
        self._last_reason: str | None = None
        self._last_error: str | None = None

    # ------------------------------------------------------------------------------------------ public API

    def start(self) -> None:
        """Start the worker thread (RefscopeError if already started or stopped)."""
        if self._thread is not None or self._stop.is_set():
            raise RefscopeError("learner: already started (or stopped); make a new Learner")
        super().start()
        _log.info("learner started: serving model version %d (%s)", self._version,
                  "bicubic" if self._model is None else f"library of {len(self._model.library)} pairs")

    def note_lr(self, frame: Frame) -> None:
        """Remember an LR frame as a pairing candidate for later references (cheap; any thread)."""
        self._recent.add(frame)

    def note_fused(self, frame: Frame) -> None:
        """Replace a noted LR frame by its fused version (same ``source``; any thread): a reference arriving later
        is paired with the fused frame the server enhanced, so the model learns from the input it serves."""
        self._recent.replace_source(frame)

    def submit_reference(self, frame: Frame) -> bool:
        """Queue an HR reference without blocking; pairs it with the LR frames noted so far.

        Returns False when the learner is stopped or has failed (see :meth:`check`), True when queued (on a full
        queue the oldest waiting reference is dropped, counted and logged to make room).
        """
        if self._stop.is_set() or self._error is not None:
            return False
        recent = self._recent.snapshot()
        dropped: Frame | None = None
        with self._wake:
            if len(self._queue) >= self._queue_size:
                dropped = self._queue.popleft()[0]
                self._dropped += 1
                self._last_error = (f"HR reference {dropped.source}: dropped unprocessed, the learning queue was full "
                                    f"({self._queue_size} references waiting)")
                total = self._dropped
            self._queue.append((frame, recent))
            self._wake.notify()
        if dropped is not None:
            _log.warning("dropped (queue_full, %d so far): HR reference %s, queue of %d full; kept the newer %s",
                         total, dropped.source, self._queue_size, frame.source)
        return True

    def status(self) -> LearnerStatus:
        """Current counters and serving model (any thread)."""
        with self._lock:
            return LearnerStatus(
                pairs_learned=self._pairs,
                references_rejected=sum(self._rejected.values()),
                rejected_by_reason=dict(self._rejected),
                references_dropped=self._dropped,
                queued=len(self._queue),
                busy=self._busy,
                library_size=0 if self._model is None else len(self._model.library),
                model_version=self._version,
                held_out_delta_db=self._delta_db,
                last_decision_reason=self._last_reason,
                last_error=self._last_error,
                models_promoted=self._promoted,
                recent_frames=len(self._recent),
                recent_mb=round(self._recent.nbytes / 2**20, 1),
                models_rejected=self._not_promoted,
                last_reference_delta_db=self._last_reference_db,
            )

    def current_model(self) -> tuple[FittedModel | None, int]:
        """The serving model (None: bicubic) and its version."""
        with self._lock:
            return self._model, self._version

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the worker: the reference being fitted is finished (or abandoned before its fit starts),
        waiting ones are discarded. Waits up to ``timeout`` seconds, then re-raises a worker failure.
        Idempotent; returns whether the thread ended."""
        with self._wake:
            self._stop.set()
            self._wake.notify_all()
        try:
            return super().stop(timeout)
        finally:
            with self._lock:
                left = len(self._queue)
                self._queue.clear()
            if left:
                _log.info("learner stopped; %d waiting reference(s) not processed", left)

    # ------------------------------------------------------------------------------------------- worker

    def _next(self, timeout: float) -> tuple[Frame, list[Frame]] | None:
        with self._wake:
            if not self._queue and not self._stop.is_set():
                self._wake.wait(timeout)
            if self._stop.is_set() or not self._queue:
                return None
            self._busy = True
            return self._queue.popleft()

    def on_start(self) -> None:
        lower_priority(where="the learner")  # serving first: a reference may wait a second, a frame should not

    def poll_once(self, timeout: float) -> None:
        """One turn: wait up to ``timeout`` s for a reference, then learn from it under the crash-only rule (a
        reference that fails is counted and quarantined; only a failure of the state stops the learner)."""
        item = self._next(timeout)
        if item is None:
            return
        hr = item[0]
        self._yield_to_serving()
        try:
            supervised(lambda: self._process(*item), worker="learner", item=f"HR reference {hr.source}",
                       count=self._count_failure, quarantine=lambda _, message: self._quarantine(hr, message),
                       reason="learn_failed", logger=_log)
        finally:
            with self._lock:
                self._busy = False

    def on_failure(self, exc: BaseException) -> None:
        with self._lock:
            self._last_error = f"learner failed: {type(exc).__name__}: {exc}"
        self._emit("error", {"component": "learner", "message": f"learner failed: {exc}"})

    def _yield_to_serving(self) -> None:
        """Wait while serving is busy (at most :data:`YIELD_TO_SERVING_S`): the frame first, then the reference."""
        if self._serving_busy is None:
            return
        deadline = time.monotonic() + YIELD_TO_SERVING_S
        while not self._stop.is_set() and time.monotonic() < deadline and self._serving_busy():
            self._stop.wait(0.02)

    def _count_failure(self, reason: str, message: str) -> None:
        with self._lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1
            self._last_error = message

    def _quarantine(self, hr: Frame, message: str) -> None:
        """The learner failed on ``hr`` (a bug, an input it cannot handle): done with it, never retried."""
        self._done(hr, "quarantined")
        self._emit("pair_rejected", {"hr": hr.source, "reason": "learn_failed", "message": message, "best_ncc": None})

    def _done(self, hr: Frame, outcome: str) -> None:
        """Mark ``hr`` finished in the catalogue -- only once what it produced is saved (restart: not in the
        catalogue means learn it again)."""
        if self._catalogue is None:
            return
        size, mtime = hr.metadata.get("file_size_bytes"), hr.metadata.get("file_mtime")
        file_version = isinstance(size, int) and isinstance(mtime, (int, float))
        self._catalogue.mark_learned(hr.source, size=int(size) if file_version else None,
                                     mtime=float(mtime) if file_version else None, outcome=outcome)

    def _process(self, hr: Frame, recent: list[Frame]) -> None:
        scale = self._config.scale
        try:
            pair = pair_reference(hr, recent, config=self._config, hooks=self._hooks)
        except PairingError as exc:
            self._reject(hr.source, exc.reason, str(exc), best_ncc=exc.best_ncc)
            self._done(hr, "rejected")
            self._scored(ReferenceOutcome(hr.source, None, None, None, None, False, self._version, str(exc)))
            return
        if self._stop.is_set():
            return
        champion = self._model  # only this thread replaces it
        try:
            split = split_for_validation(pair.lr_region, pair.hr_grid, scale=scale)
            candidate = fit_library([split.train], config=self._config, model=champion, geometries=[pair.geometry])
            champion_db = held_out_delta_psnr(None if champion is None else _predictor(champion), split.held_out,
                                              scale=scale)
            candidate_db = held_out_delta_psnr(_predictor(candidate), split.held_out, scale=scale)
            candidate.safe = choose_safe_baseline(candidate, [pair.lr_region], split.held_out,
                                                  previous=champion.safe if champion is not None else None)
        except (RefscopeModelError, ValueError) as exc:
            message = f"HR reference {hr.source} (paired with {pair.lr_source}) could not be learned from: {exc}"
            self._reject(hr.source, "fit_failed", message)
            self._done(hr, "rejected")
            self._scored(ReferenceOutcome(hr.source, pair.lr_source, None, None, None, False, self._version, message))
            return
        decision = decide_promotion(candidate_db, champion_db, margin_db=self._margin_db,
                                    baseline_delta_db=candidate.safe.delta_db)
        with self._lock:
            self._last_reference_db = _finite(champion_db)
        self._record_pair(pair)
        if self._on_learned is not None:
            self._on_learned(split, [pair.lr_source, pair.hr_source])
        if decision.promote:
            lr_frame = next((f for f in recent if f.source == pair.lr_source), None)
            serve, decision = self._against_served_net(decision, split, hr.source)
            self._promote(candidate, decision, pair,
                          domain=ModelDomain.of_frame(lr_frame) if lr_frame is not None else None, serve=serve)
        else:
            self._keep_champion(candidate, decision, pair, champion_db)
            baseline = candidate.safe
            if (champion is None and self._on_baseline is not None and baseline.delta_db > 0
                    and baseline.delta_db >= candidate_db
                    and baseline.delta_db >= (self._served_net_db(split, hr.source) or 0.0)):
                # nothing learned beats the tuned blur yet: it serves, not bicubic, and again after a restart
                save_served_baseline(self._state_dir, baseline, scale=self._config.scale, source=hr.source)
                self._on_baseline(baseline)
        self._done(hr, "learned")  # after the pair (trainer's pairs, catalogue) and a promoted library are saved
        with self._lock:
            version = self._version
            promoted = self._model is candidate
        self._scored(ReferenceOutcome(hr.source, pair.lr_source, pair.lr_region, _finite(champion_db),
                                      _finite(candidate_db), promoted, version, decision.reason))

    def _scored(self, outcome: ReferenceOutcome) -> None:
        if self._on_scored is not None:
            self._on_scored(outcome)

    # ------------------------------------------------------------------------------------------ outcomes

    def _emit(self, type: str, payload: Mapping[str, Any]) -> None:
        """Record the event in the catalogue and publish it."""
        if self._catalogue is not None:
            self._catalogue.record_event(type, payload)
        if self._events is not None:
            self._events.emit(type, payload)

    def _reject(self, hr_source: str, reason: str, message: str, *, best_ncc: float | None = None) -> None:
        with self._lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1
            self._last_error = message
        _log.warning("reference rejected (%s): %s", reason, message)
        self._emit("pair_rejected", {"hr": hr_source, "reason": reason, "message": message,
                                     "best_ncc": _finite(best_ncc)})

    def _record_pair(self, pair: PairResult) -> None:
        g = pair.geometry
        geometry = {"offset_yx": list(g.offset_yx), "factor_yx": list(g.factor_yx), "rotation_deg": g.rotation_deg,
                    "score": _finite(g.score), "box": [list(pair.box[0]), list(pair.box[1])]}
        with self._lock:
            self._pairs += 1
        _log.info("paired %s with %s: offset (%.2f, %.2f) LR px, rotation %.2f deg, NCC %.3f",
                  pair.hr_source, pair.lr_source, g.offset_yx[0], g.offset_yx[1], g.rotation_deg, g.score)
        if self._catalogue is not None:
            self._catalogue.record_pair(pair.hr_source, pair.lr_source, geometry, _finite(g.score))
        self._emit("pair_learned", {"hr": pair.hr_source, "lr": pair.lr_source, "offset": list(g.offset_yx),
                                    "rotation": g.rotation_deg, "ncc": _finite(g.score),
                                    "factor": list(g.factor_yx)})

    def _scores(self, decision: PromotionDecision, pair: PairResult) -> dict[str, Any]:
        return {"candidate_delta_db": _finite(decision.candidate_delta_db),
                "champion_delta_db": _finite(decision.champion_delta_db), "margin_db": self._margin_db,
                "hr": pair.hr_source, "lr": pair.lr_source}

    def _record_model(self, version: int, candidate: FittedModel, scores: dict[str, Any], promoted: bool,
                      reason: str) -> None:
        if self._catalogue is not None:
            self._catalogue.record_model(str(version), kind=MODEL_KIND, method=LEARN_METHOD,
                                         library_size=len(candidate.library), scores=scores, promoted=promoted,
                                         reason=reason)

    def _served_net_db(self, split: HeldOutSplit, source: str) -> float | None:
        """Held-out ΔPSNR of the network (or prior) that serves now on this reference; None when none serves or
        it cannot be measured (logged: an unmeasurable network does not hold back what was learned)."""
        net = self._served_net() if self._served_net is not None else None
        if net is None:
            return None
        try:
            return held_out_delta_psnr(net, split.held_out, scale=self._config.scale)
        except Exception as exc:  # noqa: BLE001
            _log.error("the serving network could not be measured on %s's held-out area (%s: %s)", source,
                       type(exc).__name__, exc)
            return None

    def _against_served_net(self, decision: PromotionDecision, split: HeldOutSplit, source: str
                            ) -> tuple[bool, PromotionDecision]:
        """(whether the promoted library should serve, the decision with the network's score in its reason): a
        network that serves and scores at least the library's held-out ΔPSNR on this reference keeps serving."""
        net_db = self._served_net_db(split, source)
        if net_db is None:
            return True, decision
        if not np.isfinite(net_db) or net_db < decision.candidate_delta_db:
            return True, replace(decision, reason=f"{decision.reason}; it also beats the serving network "
                                                  f"({_db(net_db)} held-out)")
        return False, replace(decision, reason=f"{decision.reason}; the serving network keeps serving: it scores "
                                               f"{_db(net_db)} on this reference's held-out area against the "
                                               f"library's {_db(decision.candidate_delta_db)}")

    def _promote(self, candidate: FittedModel, decision: PromotionDecision, pair: PairResult, *,
                 domain: ModelDomain | None = None, serve: bool = True) -> None:
        version = self._version + 1
        scores = self._scores(decision, pair)
        try:
            save_model(self._state_dir, candidate, sources=[pair.lr_source, pair.hr_source], domain=domain)
            _write_version(self._state_dir, version, decision.candidate_delta_db, len(candidate.library),
                           [pair.lr_source, pair.hr_source], serves=serve)
        except (StateError, OSError, ValueError) as exc:
            message = (f"candidate model {version} (from {pair.hr_source}) beat the serving model but could not be "
                       f"saved in {self._state_dir} ({exc}); the serving model is kept")
            with self._lock:
                self._not_promoted += 1
                self._last_reason = message
                self._last_error = message
            _log.error("%s", message)
            self._record_model(version, candidate, scores, False, message)
            self._emit("error", {"component": "learner", "message": message})
            return
        with self._lock:
            self._model = candidate
            self._version = version
            self._delta_db = _finite(decision.candidate_delta_db)
            self._promoted += 1
            self._last_reason = decision.reason
        _log.info("promoted model %d (library of %d pairs): %s", version, len(candidate.library), decision.reason)
        self._record_model(version, candidate, scores, True, decision.reason)
        self._emit("model_promoted", {"version": version, "held_out_delta_db": _finite(decision.candidate_delta_db),
                                      "serving_delta_db": _finite(decision.champion_delta_db),
                                      "reason": decision.reason, "library_size": len(candidate.library),
                                      "serves": "paired" if serve else "net"})
        if serve:
            self._on_promoted(candidate, version, decision)
        else:
            self._on_promoted(candidate, version, decision, serve=False)

    def _keep_champion(self, candidate: FittedModel, decision: PromotionDecision, pair: PairResult,
                       champion_db: float) -> None:
        with self._lock:
            self._not_promoted += 1
            self._last_reason = decision.reason
            self._delta_db = 0.0 if self._model is None else _finite(champion_db)
            version = self._version
        _log.info("candidate from %s not promoted (model %d keeps serving): %s", pair.hr_source, version,
                  decision.reason)
        self._record_model(version + 1, candidate, self._scores(decision, pair), False, decision.reason)
        self._emit("model_rejected", {"version": version, "candidate_delta_db": _finite(decision.candidate_delta_db),
                                      "held_out_delta_db": _finite(decision.champion_delta_db),
                                      "reason": decision.reason, "library_size": len(candidate.library),
                                      "hr": pair.hr_source})


# -------------------------------------------------------------------------------------- saved version


def _write_version(state_dir: Path, version: int, delta_db: float, library_size: int, sources: list[str], *,
                   serves: bool = True) -> None:
    """Write ``model_version.json`` atomically, tied to the library just saved by its checksum; ``serves`` False
    for a library promoted behind the network or prior that beat it (:func:`library_serves`)."""
    atomic_write_json(state_dir / MODEL_VERSION_FILE, {
        "serves": bool(serves),
        "version": int(version),
        "library_sha256": state_sha256(state_dir, MODEL_STATE_NAME),
        "held_out_delta_db": _finite(delta_db),
        "library_size": int(library_size),
        "sources": sources,
        "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def library_serves(state_dir: str | Path) -> bool:
    """False when the saved library was promoted behind the network or prior that beat it on its reference
    (``model_version.json`` says so): a restart serves that champion, the library only as the session's library.
    True otherwise, also without a record (a state written by ``refscope fit -o``, or by an older refscope)."""
    try:
        record = json.loads((Path(state_dir) / MODEL_VERSION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    return not (isinstance(record, dict) and record.get("serves") is False)


def load_initial(state_dir: str | Path) -> tuple[FittedModel | None, int]:
    """The saved model and its version, to resume after a restart.

    No saved model in ``state_dir`` (or no such folder): ``(None, 0)``, bicubic. A saved model is verified
    (:func:`~refscope.daemon.state.model_store.load_model`; StateError when corrupt). Its version comes from
    ``model_version.json`` when that file describes this very library (same checksum); a model without that
    file (e.g. written by ``refscope fit -o``) is version 1; a model newer than the file (a save interrupted
    before the file was written) is the file's version + 1.
    """
    folder = Path(state_dir)
    if not has_state(folder, MODEL_STATE_NAME):
        return None, 0
    model = load_model(folder)
    path = folder / MODEL_VERSION_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        version = int(record["version"])
        recorded_sha = record.get("library_sha256")
    except FileNotFoundError:
        return model, 1
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _log.warning("%s: unreadable (%s); counting the saved model as version 1", path, exc)
        return model, 1
    if recorded_sha is not None and recorded_sha != state_sha256(folder, MODEL_STATE_NAME):
        _log.warning("%s: describes version %d but the saved library is newer; resuming as version %d",
                     path, version, version + 1)
        return model, version + 1
    return model, version

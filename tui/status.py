"""Reading the daemon's ``status`` reply for display: the numbers panel, rates, and drift signals.

Pure functions of the typed reply (:class:`~refscope.daemon.wire.status.DaemonStatus`, read from the wire with
``DaemonStatus.from_dict``); a key an older daemon does not send takes its default, and values that are not
known yet read ``-``.
"""
from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from refscope.daemon.wire.status import DaemonStatus, FusionStatus, ModelStatus, TrainerStatus

__all__ = ["Signal", "drift_signals", "History", "RateMeter", "summary_lines", "fmt_ms", "fmt_db"]


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def fmt_ms(seconds: Any) -> str:
    """Seconds as ``"123 ms"`` (``"-"`` when unknown)."""
    s = _num(seconds)
    return "-" if s is None else f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"


def fmt_db(value: Any) -> str:
    """dB with a sign (``"+0.82 dB"``), ``"-"`` when unknown."""
    v = _num(value)
    return "-" if v is None else f"{v:+.2f} dB"


def _reasons(by_reason: Any, limit: int = 3) -> str:
    if not isinstance(by_reason, Mapping) or not by_reason:
        return ""
    items = sorted(((str(k), v) for k, v in by_reason.items() if _num(v)), key=lambda kv: -kv[1])[:limit]
    return " (" + ", ".join(f"{k} {int(v)}" for k, v in items) + ")" if items else ""


class RateMeter:
    """Rates per second from successive counter readings (the daemon reports totals, not rates), over the
    readings of the last ``window_s`` seconds; a counter that goes down (the daemon restarted) starts afresh."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._samples: dict[str, deque[tuple[float, float]]] = {}
        self.rates: dict[str, float | None] = {}

    def update(self, name: str, total: Any, now: float | None = None) -> float | None:
        value = _num(total)
        now = time.monotonic() if now is None else now
        if value is None:
            return self.rates.get(name)
        samples = self._samples.setdefault(name, deque())
        if samples and value < samples[-1][1]:
            samples.clear()
        samples.append((now, value))
        while len(samples) > 2 and now - samples[1][0] >= self.window_s:
            samples.popleft()
        t0, v0 = samples[0]
        self.rates[name] = (value - v0) / (now - t0) if now > t0 else None
        return self.rates[name]


def summary_lines(status: DaemonStatus, rates: Mapping[str, float | None], tui: Mapping[str, Any]) -> list[
        tuple[str, str]]:
    """(label, value) rows of the numbers panel; ``tui`` holds the TUI's own counters (stream
    messages received by role, ``bad``: undecodable)."""
    frames, latency, queues, model = status.frames, status.latency, status.queues, status.model

    def rate(name: str) -> str:
        r = rates.get(name)
        return "-" if r is None else f"{r:.1f}"

    method = model.served_by or status.method or "-"
    backend = model.backend
    sigma = _num(model.sigma_n)
    return [
        ("frames", f"in {frames.in_}  out {frames.out}  written {frames.written}"),
        ("fps", f"in {rate('in')}  out {rate('out')}"),
        ("latency", f"p50 {fmt_ms(latency.p50_s)}  p99 {fmt_ms(latency.p99_s)}"),
        ("drops", f"{frames.dropped}{_reasons(frames.dropped_by_reason)}"),
        ("errors", f"{frames.errors}{_reasons(status.errors_by_reason or frames.errors_by_reason)}"),
        ("model", f"{method} v{status.model_version}" + (f" ({backend})" if backend else "")),
        ("ΔPSNR", f"{fmt_db(status.validation_delta_db)} validation"),
        ("library", f"{status.library_size} pairs"),
        ("network", _trainer_line(status.trainer)),
        ("queues", f"serve {queues.serve}/{queues.serve_limit}  out {queues.output}  learn {queues.learner}"),
        ("σ_n", "default" if sigma is None else f"{sigma:.3g}"),
        ("stream", f"{tui.get('enhanced', 0)} enhanced, {tui.get('bad', 0)} bad"),
        ("fused", _fusion_line(status.fusion)),
        ("safe", _safe_line(model)),
    ]


def _safe_line(model: ModelStatus) -> str:
    """The safe baseline outputs are pulled toward (status ``model.safe_baseline_sigma_px``) and the share of the
    latest frame it contributed to (``model.safe_blend_share``)."""
    sigma = _num(model.safe_baseline_sigma_px)
    if sigma is None:
        return "-"
    share = _num(model.safe_blend_share)
    return f"blur σ {sigma:g} px" + ("" if share is None else f"  {100 * share:.1f}% of the last frame")


def _fusion_line(fusion: FusionStatus) -> str:
    """Frames fused into the newest served frame (status ``fusion``), of the window, and the last restart."""
    if not (fusion.enabled or fusion.auto_static_stage):
        return "off"
    line = f"{fusion.frames}/{fusion.window} frames"
    return line + (f"  reset: {fusion.last_reset}" if fusion.last_reset else "")


def _trainer_line(trainer: TrainerStatus) -> str:
    """One line about the background trainer: rounds, promotions, failures, and whether a round is running."""
    if not trainer.enabled:
        return "off"
    running = trainer.running_s
    now = f"training {running:.0f} s" if isinstance(running, (int, float)) else "idle"
    return (f"{now}  rounds {trainer.rounds}  promoted {trainer.promotions}"
            + (f"  failed {trainer.failures}" if trainer.failures else ""))


@dataclass(frozen=True)
class Signal:
    """One drift signal: its latest ``value``, ``threshold`` (None: none given) and whether it is ``over``
    (past the threshold in the signal's bad direction)."""

    name: str
    value: float | None
    threshold: float | None
    over: bool
    history: tuple[float, ...] = ()


def drift_signals(status: DaemonStatus) -> dict[str, Signal]:
    """The drift signals of the status's ``quality`` (empty when the daemon reports none): each signal's latest
    value (None while the monitor's window fills), its threshold, whether it is over it, and its recent values."""
    if status.quality is None:
        return {}
    out: dict[str, Signal] = {}
    for name, entry in status.quality.signals.items():
        history = tuple(v for v in (_num(x) for x in entry.history or ()) if v is not None)
        value = _num(entry.value)
        threshold = _num(entry.threshold if entry.threshold is not None else entry.on)
        if value is None and threshold is None:
            continue
        out[name] = Signal(name, value, threshold, bool(entry.over or entry.raised), history)
    return out


class History:
    """The last ``n`` values of each signal, kept by the TUI between polls."""

    def __init__(self, n: int = 60) -> None:
        self.n = n
        self._data: dict[str, deque[float]] = {}

    def add(self, name: str, value: float | None) -> list[float]:
        series = self._data.setdefault(name, deque(maxlen=self.n))
        if value is not None:
            series.append(value)
        return list(series)


"""Reading the daemon's ``status`` reply for display: the numbers panel, rates, and drift signals.

Pure functions of the reply dict (``Daemon.status`` in :mod:`refscope.daemon.service.daemon`); every key is optional
so that an older or newer daemon still shows what it has (missing values read ``-``).
"""
from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Signal", "drift_signals", "History", "RateMeter", "summary_lines", "fmt_ms", "fmt_db", "dig"]


def dig(document: Any, *path: str, default: Any = None) -> Any:
    """``document[path[0]][path[1]]...`` or ``default`` when any step is missing or not a mapping."""
    for key in path:
        if not isinstance(document, Mapping) or key not in document:
            return default
        document = document[key]
    return default if document is None else document


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


def summary_lines(status: Mapping[str, Any], rates: Mapping[str, float | None], tui: Mapping[str, Any]) -> list[
        tuple[str, str]]:
    """(label, value) rows of the numbers panel; ``tui`` holds the TUI's own counters (stream
    messages received by role, ``bad``: undecodable)."""
    frames = dig(status, "frames", default={})
    latency = dig(status, "latency", default={})
    queues = dig(status, "queues", default={})
    model = dig(status, "model", default={})

    def rate(name: str) -> str:
        r = rates.get(name)
        return "-" if r is None else f"{r:.1f}"

    dropped = dig(frames, "dropped", default=0)
    errors = dig(frames, "errors", default=0)
    method = dig(model, "served_by") or dig(status, "method") or "-"
    version = dig(status, "model_version", default=dig(model, "version", default="-"))
    backend = dig(model, "backend")
    sigma = _num(dig(model, "sigma_n"))
    return [
        ("frames", f"in {dig(frames, 'in', default='-')}  out {dig(frames, 'out', default='-')}  "
                   f"written {dig(frames, 'written', default='-')}"),
        ("fps", f"in {rate('in')}  out {rate('out')}"),
        ("latency", f"p50 {fmt_ms(dig(latency, 'p50_s'))}  p99 {fmt_ms(dig(latency, 'p99_s'))}"),
        ("drops", f"{dropped}{_reasons(dig(frames, 'dropped_by_reason'))}"),
        ("errors", f"{errors}{_reasons(dig(status, 'errors_by_reason') or dig(frames, 'errors_by_reason'))}"),
        ("model", f"{method} v{version}" + (f" ({backend})" if backend else "")),
        ("ΔPSNR", f"{fmt_db(dig(status, 'validation_delta_db', default=dig(model, 'validation_delta_db')))} "
                  "validation"),
        ("library", f"{dig(status, 'library_size', default=dig(model, 'library_size', default='-'))} pairs"),
        ("network", _trainer_line(dig(status, "trainer", default={}))),
        ("queues", f"serve {dig(queues, 'serve', default='-')}/{dig(queues, 'serve_limit', default='-')}  "
                   f"out {dig(queues, 'output', default='-')}  learn {dig(queues, 'learner', default='-')}"),
        ("σ_n", "default" if sigma is None else f"{sigma:.3g}"),
        ("stream", f"{tui.get('enhanced', 0)} enhanced, {tui.get('bad', 0)} bad"),
        ("fused", _fusion_line(dig(status, "fusion", default={}))),
    ]


def _fusion_line(fusion: Mapping[str, Any]) -> str:
    """Frames fused into the newest served frame (status ``fusion``), of the window, and the last restart."""
    if not fusion or not (fusion.get("enabled") or fusion.get("auto_static_stage")):
        return "off"
    line = f"{fusion.get('frames', 0)}/{fusion.get('window', '-')} frames"
    reset = fusion.get("last_reset")
    return line + (f"  reset: {reset}" if reset else "")


def _trainer_line(trainer: Mapping[str, Any]) -> str:
    """One line about the background trainer: rounds, promotions, failures, and whether a round is running."""
    if not trainer or not trainer.get("enabled", False):
        return "off"
    running = trainer.get("running_s")
    now = f"training {running:.0f} s" if isinstance(running, (int, float)) else "idle"
    failures = trainer.get("failures") or 0
    return (f"{now}  rounds {trainer.get('rounds', 0)}  promoted {trainer.get('promotions', 0)}"
            + (f"  failed {failures}" if failures else ""))


@dataclass(frozen=True)
class Signal:
    """One drift signal: its latest ``value``, ``threshold`` (None: none given) and whether it is ``over``
    (past the threshold in the signal's bad direction)."""

    name: str
    value: float | None
    threshold: float | None
    over: bool
    history: tuple[float, ...] = ()


_VALUE_KEYS = ("value", "current", "last", "latest")
_OVER_KEYS = ("over", "exceeded", "breached", "alarm", "triggered", "drift")
_SKIP = {"thresholds", "signals", "history", "t", "updated", "window"}


def _signal(name: str, entry: Any, thresholds: Mapping[str, Any]) -> Signal | None:
    history: tuple[float, ...] = ()
    direction = "above"
    over: bool | None = None
    if isinstance(entry, Mapping):
        value = next((_num(entry[k]) for k in _VALUE_KEYS if k in entry), None)
        threshold = _num(entry.get("threshold", thresholds.get(name)))
        if isinstance(entry.get("history"), list):
            history = tuple(v for v in (_num(x) for x in entry["history"]) if v is not None)
        if value is None and history:
            value = history[-1]
        raw_dir = str(entry.get("direction", entry.get("bad", "above"))).lower()
        direction = "below" if raw_dir in ("below", "min", "low", "lower", "<") else "above"
        over = next((bool(entry[k]) for k in _OVER_KEYS if isinstance(entry.get(k), bool)), None)
    else:
        value = _num(entry)
        if value is None:
            return None
        threshold = _num(thresholds.get(name))
    if over is None:
        over = (value is not None and threshold is not None
                and (value < threshold if direction == "below" else value > threshold))
    return Signal(name, value, threshold, over, history)


def drift_signals(status: Mapping[str, Any]) -> dict[str, Signal]:
    """The drift signals of ``status["quality"]`` (empty when the daemon reports none).

    Accepted shapes: ``{"signals": {name: {...}}}`` or ``{name: {...}}`` with per-signal ``value`` (or
    ``current``/``last``), ``threshold``, optional ``direction`` (``"above"``/``"below"``: which side is bad),
    ``history`` (list) and an explicit boolean ``over``/``exceeded``/``breached``/``alarm``; or
    ``{name: number, "thresholds": {name: number}}``.
    """
    quality = status.get("quality") if isinstance(status, Mapping) else None
    if not isinstance(quality, Mapping):
        return {}
    thresholds = quality.get("thresholds") if isinstance(quality.get("thresholds"), Mapping) else {}
    source = quality.get("signals") if isinstance(quality.get("signals"), Mapping) else quality
    out: dict[str, Signal] = {}
    for name, entry in source.items():
        if str(name) in _SKIP:
            continue
        signal = _signal(str(name), entry, thresholds)
        if signal is not None and (signal.value is not None or signal.threshold is not None):
            out[str(name)] = signal
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


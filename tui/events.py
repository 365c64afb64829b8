"""Daemon events (``[b"event", {"type", "t", "payload"}]`` from :class:`~refscope.daemon.publish.EventPublisher`)
as one-line log entries; pure functions, no UI.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["LogEntry", "decode_event", "describe_event", "local_entry", "HIDDEN_TYPES", "TYPE_STYLES"]

HIDDEN_TYPES = frozenset({"frame_enhanced"})
"""Per-frame events: too many for the log (the numbers panel counts frames)."""

TYPE_STYLES: Mapping[str, str] = {
    "pair_learned": "green",
    "pair_rejected": "yellow",
    "model_promoted": "bold green",
    "model_serving": "green",
    "model_rejected": "yellow",
    "reference_requested": "bold cyan",
    "reference_received": "cyan",
    "reference_request_expired": "yellow",
    "quality_drift": "bold red",
    "quality_recovered": "green",
    "output_dropped": "yellow",
    "error": "bold red",
    "paused": "magenta",
    "resumed": "magenta",
    "settings_changed": "blue",
    "connection": "dim",
    "action": "cyan",
    "action_failed": "red",
}
"""Rich style of each entry type (others: default)."""


@dataclass(frozen=True)
class LogEntry:
    """One line of the event log: ``t`` unix seconds, ``type`` and a human ``text``."""

    t: float
    type: str
    text: str

    def matches(self, needle: str) -> bool:
        """Case-insensitive substring match on type and text (empty needle: everything)."""
        needle = needle.strip().lower()
        return not needle or needle in self.type.lower() or needle in self.text.lower()

    def clock(self) -> str:
        return time.strftime("%H:%M:%S", time.localtime(self.t))


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    if "/" in text and len(text) > limit:  # a path: keep the file name
        text = "…/" + text.rsplit("/", 1)[-1]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _f(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _region(region: Any) -> str:
    if isinstance(region, (list, tuple)) and len(region) == 4:
        return "[" + ", ".join(_f(v, ".0f") for v in region) + "]"
    if isinstance(region, Mapping):
        return json.dumps(dict(region), separators=(",", ":"))[:80]
    return "anywhere" if region is None else _short(region)


def describe_event(type: str, payload: Mapping[str, Any]) -> str:
    """The log line of one daemon event (unknown types: their payload, compactly)."""
    p = payload
    if type == "pair_learned":
        return (f"pair learned: {_short(p.get('hr'), 40)} in {_short(p.get('lr'), 40)}, NCC {_f(p.get('ncc'), '.3f')}, "
                f"rotation {_f(p.get('rotation'), '.2f')}°")
    if type == "pair_rejected":
        return f"reference rejected ({p.get('reason', '?')}): {_short(p.get('message', ''), 100)}"
    if type == "net_round":
        trained = " (companion)" if p.get("trained") == "companion" else ""
        weight = p.get("companion_weight")
        share = p.get("baseline_share")
        blend = (f", companion weight {_f(weight, '.2f')}" if weight else "") + (
            f", baseline share {_f(share, '.2f')}" if share else "")
        return (f"network round {p.get('round', '?')}{trained} {p.get('status', '?')}: candidate "
                f"{_f(p.get('candidate_delta_db'), '+.2f')} dB{blend} vs {p.get('champion', '?')} "
                f"{_f(p.get('champion_delta_db'), '+.2f')} dB — {p.get('reason', '')}")
    if type == "model_promoted" and p.get("kind") == "net":
        return (f"network v{p.get('version', '?')} promoted: ΔPSNR {_f(p.get('held_out_delta_db'), '+.2f')} dB — "
                f"{p.get('reason', '')}")
    if type == "model_promoted":
        return (f"model v{p.get('version', '?')} promoted: ΔPSNR {_f(p.get('held_out_delta_db'), '+.2f')} dB, "
                f"{p.get('library_size', '?')} pairs — {p.get('reason', '')}")
    if type == "model_serving":
        what = "network" if p.get("kind") == "net" else "model"
        return (f"{what} v{p.get('version', '?')} now serving ({p.get('backend', '?')}, "
                f"{_f(p.get('promotion_to_serving_s'), '.1f')} s after its promotion)")
    if type == "model_rejected":
        return (f"candidate rejected (v{p.get('version', '?')} keeps serving): "
                f"{_f(p.get('candidate_delta_db'), '+.2f')} vs {_f(p.get('held_out_delta_db'), '+.2f')} dB — "
                f"{p.get('reason', '')}")
    if type == "reference_requested":
        region = p.get("region")
        where = (f"region {_region(region)}" if region is not None else
                 f"anywhere (suggested {_region(p['suggested_region'])})" if p.get("suggested_region") else
                 "region anywhere")
        text = f"reference requested ({p.get('reason', '?')}): {where}"
        if p.get("detail") and p.get("reason") != "operator":
            text += f" — {_short(p['detail'], 60)}"
        return text + (f" — {_short(p['note'], 60)}" if p.get("note") else "")
    if type == "frame_role":
        role = {"both": "reference + live", "hr": "reference", "lr": "live"}.get(p.get("role"), p.get("role", "?"))
        return f"{role}: {_short(p.get('source', '?'), 40)} — {_short(p.get('reason', ''), 70)}"
    if type == "reference_received":
        return f"reference received: {_short(p.get('hr', '?'), 60)}"
    if type == "reference_request_expired":
        return f"reference request {p.get('id', '?')} expired ({p.get('reason', '?')})"
    if type in ("quality_drift", "quality_recovered"):
        signals = p.get("signals") if isinstance(p.get("signals"), Mapping) else {}
        raised = [f"{name} {_f(v.get('value'), '.2f')}" for name, v in signals.items()
                  if isinstance(v, Mapping) and (v.get("raised") or v.get("over"))]
        if type == "quality_recovered":
            return "drift cleared: every signal back within its threshold"
        return "drift: " + (", ".join(raised) if raised else "signals past their thresholds")
    if type == "error":
        return f"error in {p.get('component', 'daemon')}: {_short(p.get('message', ''), 120)}"
    if type == "output_dropped":
        return f"output dropped ({p.get('reason', '?')}): {_short(p.get('source', ''), 60)}"
    if type in ("paused", "resumed"):
        return type
    if type == "settings_changed":
        return f"settings: method {p.get('method', '?')}, σ_n {p.get('sigma_n', 'default')}, x{p.get('scale', '?')}"
    return f"{type}: {json.dumps(dict(p), separators=(',', ':'), default=str)[:120]}"


def decode_event(parts: list[bytes]) -> LogEntry | None:
    """A log entry from an event message, or None for a message that is not an event or is hidden."""
    if len(parts) != 2:
        return None
    try:
        document = json.loads(parts[1].decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("type"), str):
        return None
    type = document["type"]
    if type in HIDDEN_TYPES:
        return None
    payload = document.get("payload") if isinstance(document.get("payload"), dict) else {}
    t = document.get("t")
    t = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else time.time()
    return LogEntry(t, type, describe_event(type, payload))


def local_entry(type: str, text: str) -> LogEntry:
    """An entry made by the TUI itself (connection changes, action results)."""
    return LogEntry(time.time(), type, text)

"""``refscope demo`` (live, headless): the daemon beside the simulated microscope, end to end, in ~30 s."""
from __future__ import annotations

import json

from refscope.daemon.offline import live_demo
from refscope.daemon.cli import main


def test_headless_demo_requests_receives_and_learns(tmp_path, capsys):
    out = tmp_path / "summary.json"
    assert main(["demo", "--headless", "--duration", "20", "--json", str(out), "--workdir", str(tmp_path / "demo")]) == 0
    summary = json.loads(out.read_text())
    for key in ("frames_in", "frames_out", "references_requested", "references_received", "models_promoted",
                "quality", "timeline"):
        assert key in summary, key
    assert summary["frames_out"] >= 20 and summary["frames_in"] >= summary["frames_out"]
    assert summary["references_requested"] >= 1 and summary["references_received"] >= 1
    assert summary["models_promoted"] >= 1
    # the summary counts from the catalogue (issue 15.9: the last status polled under-counted), and every promoted
    # library says when it started serving, after its promotion
    from refscope.daemon.state.catalogue import Catalogue

    with Catalogue.in_state_dir(tmp_path / "demo" / "state") as catalogue:
        assert summary["frames_enhanced"] == catalogue.counts().frames["enhanced"] >= 20
    served = [p for p in summary["promotions"] if p["serving_t"] is not None]
    assert served and all(p["serving_t"] >= p["t"] for p in served)
    measured = [p for p in summary["quality"] if p.get("coverage") is not None]
    assert measured and {"t", "coverage", "texture", "intensity", "focus", "held_out", "drift"} <= set(measured[-1])
    assert [e["t"] for e in summary["timeline"]] == sorted(e["t"] for e in summary["timeline"])
    printed = capsys.readouterr().out
    assert "timeline" in printed and "reference_requested" in printed and "model_promoted" in printed
    assert (tmp_path / "demo" / "acquisition" / "frame_000001_LR.tif").is_file()
    assert list((tmp_path / "demo" / "requests").glob("reference-request-*.json"))


def test_tui_is_called_with_the_daemon_endpoints():
    endpoints = {"control": "tcp://127.0.0.1:1", "pub": "tcp://127.0.0.1:2", "events": "tcp://127.0.0.1:3"}
    calls = []

    def run_tui(control, *, stream=None, events=None, log_file=None):
        calls.append((control, stream, events))

    def run_tui_connect(*, connect):
        calls.append(connect)

    live_demo._run_tui(run_tui, endpoints)
    live_demo._run_tui(run_tui_connect, endpoints)
    assert calls == [("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3"), "tcp://127.0.0.1:1"]


def test_the_live_demo_shows_the_tui_the_command_line_hands_it(tmp_path, capsys):
    """The TUI comes from the command line (the one import of refscope.tui in daemon/), not from the demo."""
    from refscope.daemon.wire.control import ControlClient

    seen = []

    def run_tui(control, *, stream=None, events=None, log_file=None):
        with ControlClient(control, timeout_s=10.0) as client:  # a live daemon answers on what the TUI was given
            seen.append(client.call("status")["status"]["running"])

    assert live_demo.run_live_demo(tui=run_tui, small=True, workdir=str(tmp_path / "demo")) in (0, 1)
    assert seen == [True]
    assert live_demo.run_live_demo(tui=run_tui, headless=True, duration_s=1.0, small=True,
                                   workdir=str(tmp_path / "demo2")) in (0, 1)
    assert seen == [True]  # headless: no TUI

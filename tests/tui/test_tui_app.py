"""The real app, driven by the pilot, against a fake daemon made of the daemon's own endpoint classes."""
from __future__ import annotations

from refscope.tui.app import METHOD_CYCLE
from refscope.tui.event_log import EventLog
from refscope.tui.frame_view import FrameView
from refscope.tui.help_screen import HelpScreen
from refscope.tui.live_view import LiveView
from refscope.tui.simulator import FakeDaemon
from refscope.tui.stats_panel import StatsPanel
from refscope.tui.status_bar import StatusBar

from tui_harness import events_flowing, make_app, pilot_test, screen_text, wait_until


def pane_cells(view: FrameView) -> list[tuple]:
    """What a pane draws: (text, style) of every segment of every row."""
    return [tuple((seg.text, seg.style) for seg in view.render_line(y)) for y in range(view.size.height)]


def bar_text(app) -> str:
    return str(app.query_one(StatusBar).render())


@pilot_test
async def test_frames_appear_live_and_numbers_update(fake):
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        raw, enhanced = app.query_one("#raw", FrameView), app.query_one("#enhanced", FrameView)
        await wait_until(pilot, lambda: app.connected, what="connected")
        assert "waiting for raw frames" in screen_text(app)
        await wait_until(pilot, lambda: raw.frames_shown and enhanced.frames_shown, tick=fake.publish_frame,
                         what="first frames")
        first = pane_cells(raw)
        seq = fake.seq
        await wait_until(pilot, lambda: raw.frames_shown > 3 and f"raw LR #{fake.seq}" in raw.border_title,
                         tick=fake.publish_frame, what="newer frames")
        assert fake.seq > seq and pane_cells(raw) != first  # the picture itself changed
        assert raw.shape == fake.shape and enhanced.shape == (2 * fake.shape[0], 2 * fake.shape[1])
        assert enhanced.border_title.startswith("enhanced #") and "paired v3" in enhanced.border_title
        assert "ρ 1." in enhanced.border_title  # the frame's data consistency from its header
        assert {text[0] for row in pane_cells(raw) for text, _ in row} <= {"▀", "▄", " "}  # half blocks only
        stats = app.query_one(StatsPanel)
        await wait_until(pilot, lambda: f"in {fake.seq + fake.seq // 10}  out {fake.seq}" in stats.rows[0][1],
                         what="frame counters")
        text = screen_text(app)
        assert "latency p50" in text and "paired v3 (onnx)" in text and "+0.84 dB" in text
        assert "coverage" in text and "intensity" in text and "focus" in text  # drift signals with sparklines
        assert len(app.query_one("#drift-spark-intensity").data) > 1  # the sparkline has points


@pilot_test
async def test_every_key_action_reaches_the_daemon_and_its_answer_is_shown(fake):
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.connected, what="connected")
        await events_flowing(pilot, fake)

        async def press(key: str, cmd: str, shown: str) -> dict:
            before = len(fake.calls)
            await pilot.press(key)
            await wait_until(pilot, lambda: len(fake.calls) > before and shown in bar_text(app),
                             what=f"{key} -> {cmd} -> {shown!r}")
            call, args = fake.calls[-1]
            assert call == cmd, (key, fake.calls)
            return args

        await press("s", "snapshot", "✗ snapshot: snapshot: no frame has been enhanced yet")  # a refusal
        fake.publish_frame()
        await press("s", "snapshot", "✓ snapshot saved: frame_001_raw.tif, frame_001_enhanced.tif")
        assert (await press("r", "request_reference", "✓ reference requested (anywhere)"))["region"] is None
        await press("p", "pause", "✓ paused")
        await wait_until(pilot, lambda: "paused" in bar_text(app).split("│")[1], what="paused state")
        await press("p", "resume", "✓ resumed")
        assert await press("m", "set", f"method {METHOD_CYCLE[1]}") == {"method": METHOD_CYCLE[1]}
        assert await press("plus", "set", "σ_n 1.25") == {"sigma_n": 1.25}
        assert await press("minus", "set", "σ_n 1") == {"sigma_n": 1.0}
        log = app.query_one(EventLog)
        await wait_until(pilot, lambda: any(e.type == "reference_requested" for e in log.entries),
                         what="the daemon's reference_requested event")
        assert [e.type for e in log.shown()][0] != "connection"  # newest first
        assert app.notify and app._notifications  # acknowledgements also pop up


@pilot_test
async def test_zoom_pan_confidence_and_region_of_a_reference_request(fake):
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        raw, enhanced = app.query_one("#raw", FrameView), app.query_one("#enhanced", FrameView)
        live = app.query_one(LiveView)
        await wait_until(pilot, lambda: raw.window is not None and enhanced.window is not None,
                         tick=fake.publish_frame, what="frames")
        full = raw.window.region
        await pilot.press("z", "z")
        await wait_until(pilot, lambda: raw.window.region != full and raw.border_subtitle.endswith("zoom ×2.25"),
                         what="zoomed render")
        zoomed = raw.window.region
        assert zoomed[2] - zoomed[0] < (full[2] - full[0]) / 2
        await pilot.press("l", "right")
        await wait_until(pilot, lambda: raw.window.region[1] > zoomed[1], what="panned right")
        assert live.center[1] > 0.5
        await pilot.press("r")
        await wait_until(pilot, lambda: fake.calls and fake.calls[-1][0] == "request_reference", what="request")
        region = fake.calls[-1][1]["region"]
        assert region is not None and 0 <= region[1] < region[3] <= fake.shape[1]
        await pilot.press("c")
        await wait_until(pilot, lambda: enhanced.border_title.startswith("confidence ←"), tick=fake.publish_frame,
                         what="confidence map")
        await pilot.press("c", "0")
        await wait_until(pilot, lambda: enhanced.border_title.startswith("enhanced") and raw.window.region == full,
                         tick=fake.publish_frame, what="back to the enhanced frame, full view")


@pilot_test
async def test_event_log_is_newest_first_and_filterable(fake):
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        log = app.query_one(EventLog)
        await wait_until(pilot, lambda: app.connected, what="connected")
        await events_flowing(pilot, fake)
        await wait_until(pilot, lambda: any(e.type == "model_promoted" for e in log.entries),
                         tick=lambda: (fake.publish_frame(), fake.emit_learner_event()), what="learner events")
        fake.emit("error", {"component": "learner", "message": "disk full"})
        await wait_until(pilot, lambda: log.shown()[0].type == "error", what="newest error on top")
        await pilot.press("slash")
        await pilot.press(*"promoted")
        await wait_until(pilot, lambda: log.shown() and all(e.type == "model_promoted" for e in log.shown()),
                         what="filter applied")
        assert "events " in log.border_title and "/" in log.border_title
        assert "model v3 promoted: ΔPSNR +0.84 dB" in screen_text(app)
        await pilot.press("escape", "q")  # Esc leaves the filter, then q quits (not typed into the filter)
        await pilot.pause(0.2)
    assert app.return_code == 0 or app.return_code is None


@pilot_test
async def test_help_screen_lists_the_keys(fake):
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help screen")
        text = screen_text(app)
        for words in ("request a reference scan", "pause / resume", "best, paired, net, paired-faithful", "σ_n",
                      "snapshot", "confidence map", "zoom in / out", "pan", "quit"):
            assert words in text, words
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, HelpScreen), what="help closed")


@pilot_test
async def test_starts_before_the_daemon_survives_a_restart_and_follows_new_endpoints():
    first = FakeDaemon().start()
    control = first.endpoints["control"]
    first.stop()  # nothing listens there now: the UI starts before the daemon
    app = make_app(control)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.connected is False and "disconnected" in bar_text(app),
                         what="disconnected at start")
        await pilot.press("p")  # refused at once, nothing is queued behind the dead endpoint
        await wait_until(pilot, lambda: "✗ pause: not connected to the daemon" in bar_text(app), what="refusal")
        daemon = FakeDaemon(control).start()
        try:
            await wait_until(pilot, lambda: app.connected and "connected" in bar_text(app), what="connected")
            raw = app.query_one("#raw", FrameView)
            await wait_until(pilot, lambda: raw.frames_shown > 0, tick=daemon.publish_frame, what="frames")
            daemon.stop()
            await wait_until(pilot, lambda: "disconnected" in bar_text(app), what="disconnected after stop")
            assert "-stale" in app.query_one(StatsPanel).classes
            daemon = FakeDaemon(control).start()  # restarted: same control endpoint, new stream/event ports
            for _ in range(3):
                daemon.publish_frame()
            await wait_until(pilot, lambda: app.connected, what="reconnected")
            await wait_until(pilot, lambda: f"raw LR #{daemon.seq}" in raw.border_title, tick=daemon.publish_frame,
                             what="frames from the restarted daemon")
            log = app.query_one(EventLog)
            assert [e.text.split(":")[0] for e in log.entries if e.type == "connection"][:4] == [
                "disconnected", "connected to tcp", "disconnected", "connected to tcp"]
        finally:
            daemon.stop()


@pilot_test
async def test_an_older_daemon_without_raw_frames_confidence_or_quality():
    with FakeDaemon(roles=("enhanced",), quality=False) as daemon:
        app = make_app(daemon)
        async with app.run_test(size=(120, 40)) as pilot:
            enhanced = app.query_one("#enhanced", FrameView)
            await wait_until(pilot, lambda: enhanced.frames_shown > 1, tick=daemon.publish_frame, what="frames")
            text = screen_text(app)
            assert "waiting for raw frames" in text and "no drift signals reported" in text
            await pilot.press("c")
            await wait_until(pilot, lambda: "no confidence map in the stream" in screen_text(app), what="no map")

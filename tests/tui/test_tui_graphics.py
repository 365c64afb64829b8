"""Real pixels for the operator (issue 15, item 6): with an image protocol (Kitty graphics / Sixel) the panes
are pictures at the pane's pixel resolution (textual-image's widget), elsewhere half blocks; a scale bar from the
stream's pixel size; click to pick the region and ``1`` for the 1:1 zoom, raw and enhanced side by side. The real
app is driven by the pilot against a fake daemon made of the daemon's own endpoint classes."""
from __future__ import annotations

import numpy as np
import pytest

from refscope.tui.app import RefscopeApp
from refscope.tui.frame_view import FrameView
from refscope.tui.graphics import ENV_VAR, detect_graphics, frame_picture, scale_bar
from refscope.tui.live_view import LiveView
from refscope.tui.picture_view import PictureView
from refscope.tui.simulator import FakeDaemon

from tui_harness import APP_OPTIONS, pilot_test, wait_until


def _app(fake: FakeDaemon, graphics: str) -> RefscopeApp:
    return RefscopeApp(fake.endpoints["control"], graphics=graphics, **APP_OPTIONS)


@pilot_test
async def test_with_an_image_protocol_the_panes_show_pictures_at_real_resolution(fake):
    from textual_image.widget import TGPImage

    app = _app(fake, "kitty")
    async with app.run_test(size=(120, 40)) as pilot:
        raw, enhanced = app.query_one("#raw", FrameView), app.query_one("#enhanced", FrameView)
        assert isinstance(raw, PictureView) and isinstance(enhanced, PictureView)
        await wait_until(pilot, lambda: app.connected, what="connected")
        await wait_until(pilot, lambda: raw.frames_shown and enhanced.frames_shown, tick=fake.publish_frame,
                         what="first frames")
        for view in (raw, enhanced):
            widget = view.image_widget
            assert isinstance(widget, TGPImage) and widget.display and widget.image is view.picture
            per_y, per_x = view.px_per_cell
            assert view.picture.size == (view.size.width * per_x, view.size.height * per_y)  # the pane's pixels
            assert np.asarray(view.picture).std() > 5  # an image, not a blank
            assert all(not strip.text.strip("▀▄ ") for strip in (view.render_line(y) for y in range(3)))
        assert raw.shape == fake.shape and enhanced.shape == (2 * fake.shape[0], 2 * fake.shape[1])
        # the scale bar: a round length from the stream's pixel size (5 nm LR, 2.5 nm enhanced)
        assert raw.border_subtitle.endswith("nm") and enhanced.border_subtitle.endswith("nm")
        assert not app.query("HalfcellImage")


@pilot_test
async def test_without_an_image_protocol_the_panes_are_half_blocks_with_a_scale_bar(fake):
    app = _app(fake, "halfblock")
    async with app.run_test(size=(120, 40)) as pilot:
        raw = app.query_one("#raw", FrameView)
        assert not isinstance(raw, PictureView) and not app.query(PictureView)
        await wait_until(pilot, lambda: app.connected, what="connected")
        await wait_until(pilot, lambda: raw.frames_shown, tick=fake.publish_frame, what="first frames")
        cells = {seg.text[0] for y in range(raw.size.height) for seg in raw.render_line(y) if seg.text}
        assert cells <= {"▀", "▄", " "} and "▀" in cells
        assert raw.border_subtitle.startswith("━") and raw.border_subtitle.endswith(" nm")


@pilot_test
async def test_click_picks_the_region_and_1_zooms_both_panes_to_one_to_one_there(fake):
    app = _app(fake, "halfblock")
    async with app.run_test(size=(120, 40)) as pilot:
        live = app.query_one(LiveView)
        raw, enhanced = app.query_one("#raw", FrameView), app.query_one("#enhanced", FrameView)
        await wait_until(pilot, lambda: app.connected, what="connected")
        await wait_until(pilot, lambda: raw.frames_shown and enhanced.frames_shown, tick=fake.publish_frame,
                         what="first frames")
        window = raw.window
        x = window.pad_left + len(window.cols) // 4  # a quarter into the frame, in display px = cells across
        y = (window.pad_top + len(window.rows) * 3 // 4) // 2
        await pilot.click("#raw", offset=(x + 1, y + 1))  # +1: the pane's border
        await pilot.pause(0.1)
        assert live.center[1] == pytest.approx(0.25, abs=0.05) and live.center[0] == pytest.approx(0.75, abs=0.06)
        await pilot.press("1")
        target = live.one_to_one_zoom()
        assert target > 1 and live.zoom == pytest.approx(target)
        await wait_until(pilot, lambda: enhanced.window is not None and enhanced.window.scale == pytest.approx(1.0)
                         and raw.window.scale == pytest.approx(2.0), tick=fake.publish_frame, what="1:1 render")
        # raw and enhanced show the same region (in LR pixels) side by side
        ry0, rx0, ry1, rx1 = raw.window.region
        ey0, ex0, ey1, ex1 = (v / 2 for v in enhanced.window.region)
        assert (ry0, rx0, ry1, rx1) == pytest.approx((ey0, ex0, ey1, ex1), abs=0.5)
        assert "zoom ×" in enhanced.border_subtitle
        await pilot.press("1")
        assert live.zoom == 1.0


def test_the_protocol_is_asked_of_the_terminal_and_can_be_forced(monkeypatch) -> None:
    import textual_image.renderable as renderable

    assert detect_graphics({ENV_VAR: "sixel"}) == "sixel" and detect_graphics({ENV_VAR: "halfblock"}) == "halfblock"
    with pytest.raises(ValueError, match="kitty, sixel, halfblock"):
        detect_graphics({ENV_VAR: "ascii"})
    assert detect_graphics({}, tty=False) == "halfblock"  # a pipe, a log
    monkeypatch.setattr(renderable, "Image", renderable.TGPImage)  # what textual-image found answering the query
    assert detect_graphics({}, tty=True) == "kitty"
    monkeypatch.setattr(renderable, "Image", renderable.SixelImage)
    assert detect_graphics({}, tty=True) == "sixel"
    monkeypatch.setattr(renderable, "Image", renderable.HalfcellImage)  # plain SSH: no answer
    assert detect_graphics({}, tty=True) == "halfblock"


def test_scale_bar_and_picture() -> None:
    assert scale_bar(10.0, 500) == (100, "1 µm")  # a fifth of 5 µm, rounded to 1-2-5
    assert scale_bar(0.02, 400) == (50, "1 nm") and scale_bar(0.002, 400) == (50, "100 pm")
    assert scale_bar(None, 400) is None  # type: ignore[arg-type]
    frame = np.add.outer(np.arange(100.0), np.arange(200.0))
    picture, window, label = frame_picture(frame, 300, 400, pixel_size_nm=5.0)
    assert picture.size == (400, 300) and window.scale == pytest.approx(2.0) and label == "200 nm"
    pixels = np.asarray(picture)
    assert pixels[window.pad_top + 50 * 2, window.pad_left + 300, 0] > pixels[window.pad_top, window.pad_left, 0]
    assert (pixels == 255).all(axis=2).sum() >= 40 * 2  # the white bar: 40 px long at 5 nm/frame px x2

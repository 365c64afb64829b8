"""The layout at 120x40 and 80x24, pinned as facts about widget regions (not a brittle full-screen dump)."""
from __future__ import annotations

import pytest
from tui_harness import make_app, pilot_test, screen_text, wait_until

# widget id -> (x, y, width, height) on screen; None: not displayed
GOLDEN = {
    (120, 40): {
        "status-bar": (0, 0, 120, 1),
        "live": (0, 1, 120, 24),
        "raw": (0, 1, 60, 24),
        "enhanced": (60, 1, 60, 24),
        "bottom": (0, 25, 120, 14),
        "stats": (0, 25, 40, 14),
        "drift": (40, 25, 32, 14),
        "events": (72, 25, 48, 14),
        "event-filter": (73, 26, 46, 1),
    },
    (80, 24): {
        "status-bar": (0, 0, 80, 1),
        "live": (0, 1, 80, 13),
        "raw": (0, 1, 40, 13),
        "enhanced": (40, 1, 40, 13),
        "bottom": (0, 14, 80, 9),
        "stats": (0, 14, 36, 9),
        "drift": None,
        "events": (36, 14, 44, 9),
        "event-filter": (37, 15, 42, 1),
    },
}


@pytest.mark.parametrize("size", sorted(GOLDEN))
@pilot_test
async def test_layout_facts(fake, size):
    app = make_app(fake)
    async with app.run_test(size=size) as pilot:
        raw = app.query_one("#raw")
        await wait_until(pilot, lambda: raw.frames_shown > 0 and app.connected, tick=fake.publish_frame,
                         what="a frame and a status")
        await pilot.pause(0.1)
        facts = {}
        for name in GOLDEN[size]:
            widget = app.query_one(f"#{name}")
            r = widget.region
            facts[name] = (r.x, r.y, r.width, r.height) if widget.display and r.area else None
        assert facts == GOLDEN[size]
        lines = screen_text(app).splitlines()
        assert len(lines) == size[1] and all(len(line) == size[0] for line in lines)
        assert lines[0].lstrip().startswith("● connected")
        assert "quit" in lines[-1] and "help" in lines[-1]  # the footer
        assert "raw LR #" in lines[1] and "enhanced #" in lines[1]
        # the image fills the pane's inside: rows of half blocks between the borders
        image_rows = [line[1:raw.region.width - 1] for line in lines[2:raw.region.bottom - 1]]
        assert sum(set(row) <= {"▀", "▄", " "} and "▀" in row for row in image_rows) >= len(image_rows) - 2
        assert "frames" in screen_text(app) and "events" in lines[facts["events"][1]]

"""`refscope replay`: acquisition order from the metadata, real/scaled/fixed gaps, atomic copies, clear errors."""
from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from refscope.daemon.atomic import TEMP_MARKER
from refscope.daemon.cli import main
from refscope.daemon.ingest.replay import ReplayError, plan_replay, replay
from refscope.daemon.images.tiff_write import write_tiff

T0 = datetime(2020, 2, 13, 20, 8, 14)


def _session(folder: Path) -> dict[str, float]:
    """Three frames whose names sort against their acquisition order, plus one without a time (mtime used)."""
    folder.mkdir()
    times = {"c_first.tif": 0.0, "a_second.tif": 30.0, "b_third.tif": 75.0}
    for index, (name, offset) in enumerate(times.items()):
        image = np.full((32, 40), 100 + index, dtype=np.uint16)
        image[::3] += 7  # not constant
        write_tiff(folder / name, image, pixel_size_nm=10.0,
                   metadata={"acquired_at": (T0 + timedelta(seconds=offset)).isoformat()})
    (folder / "a_second.tif.json").write_text('{"pixel_size_nm": 10.0}')
    (folder / "notes.txt").write_text("not an image")
    image = np.arange(32 * 40, dtype=np.uint16).reshape(32, 40)
    write_tiff(folder / "d_untimed.tif", image, pixel_size_nm=10.0)
    late = (T0 + timedelta(hours=1)).timestamp()
    os.utime(folder / "d_untimed.tif", (late, late))
    return times


def test_plan_orders_by_acquisition_time_not_by_name(tmp_path):
    _session(tmp_path / "s")
    items = plan_replay(tmp_path / "s")
    assert [i.path.name for i in items] == ["c_first.tif", "a_second.tif", "b_third.tif", "d_untimed.tif"]
    assert [i.time_source for i in items] == ["metadata"] * 3 + ["mtime"]
    assert items[1].t - items[0].t == pytest.approx(30.0)


def test_replay_waits_the_real_gaps_divided_by_speed_or_a_fixed_gap(tmp_path):
    _session(tmp_path / "s")
    items = plan_replay(tmp_path / "s")[:3]
    for speed, gap, expected in ((None, None, [30.0, 45.0]), (10.0, None, [3.0, 4.5]), (None, 0.25, [0.25, 0.25])):
        into = tmp_path / f"w{speed}{gap}"
        into.mkdir()
        waits: list[float] = []
        copied = replay(items, into, speed=speed, gap_s=gap, sleep=waits.append)
        assert waits == pytest.approx(expected)
        assert [p.name for p in copied] == ["c_first.tif", "a_second.tif", "b_third.tif"]
        assert (into / "a_second.tif.json").read_text() == '{"pixel_size_nm": 10.0}'  # sidecar travels along
        assert (into / "b_third.tif").read_bytes() == (tmp_path / "s" / "b_third.tif").read_bytes()
        assert not (into / "notes.txt").exists()


def test_copies_are_atomic_and_the_session_is_left_alone(tmp_path):
    """A watcher polling the folder during the copies only ever sees complete files under image names."""
    _session(tmp_path / "s")
    big = np.random.default_rng(0).integers(0, 4000, (1500, 1500)).astype(np.uint16)
    write_tiff(tmp_path / "s" / "e_big.tif", big, pixel_size_nm=10.0,
               metadata={"acquired_at": (T0 + timedelta(seconds=90)).isoformat()})
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "s").iterdir()}
    into = tmp_path / "w"
    into.mkdir()
    seen_partial: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        sources = {p.name: p.stat().st_size for p in (tmp_path / "s").iterdir()}
        while not stop.is_set():
            for entry in os.scandir(into):
                if TEMP_MARKER in entry.name:
                    continue  # the watcher ignores temporary names
                if entry.name in sources and entry.stat().st_size != sources[entry.name]:
                    seen_partial.append(entry.name)
            time.sleep(0.0005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        replay(plan_replay(tmp_path / "s"), into, gap_s=0.0)
    finally:
        stop.set()
        watcher.join()
    assert seen_partial == []
    assert sorted(p.name for p in into.iterdir()) == sorted(n for n in before if n != "notes.txt")
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "s").iterdir()} == before


def test_errors_name_the_folder_or_file(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "missing"), "--into", str(tmp_path)]) == 2
    assert "missing: no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["replay", str(tmp_path / "empty"), "--into", str(tmp_path)]) == 2
    assert "no images to replay" in capsys.readouterr().err
    _session(tmp_path / "s")
    (tmp_path / "s" / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ReplayError, match="broken.tif"):
        plan_replay(tmp_path / "s")
    (tmp_path / "s" / "broken.tif").unlink()
    into = tmp_path / "w"
    into.mkdir()
    (into / "a_second.tif").write_bytes(b"the operator's own file")
    assert main(["replay", str(tmp_path / "s"), "--into", str(into), "--gap-s", "0"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (into / "a_second.tif").read_bytes() == b"the operator's own file"
    assert main(["replay", str(tmp_path / "s"), "--into", str(into), "--speed", "0"]) == 2


def test_cli_replays_a_session_in_order(tmp_path, capsys):
    _session(tmp_path / "s")
    into = tmp_path / "w"
    into.mkdir()
    assert main(["replay", str(tmp_path / "s"), "--into", str(into), "--gap-s", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("replaying 4 image(s)")
    assert [line.split()[3] for line in out[1:]] == ["c_first.tif", "a_second.tif", "b_third.tif", "d_untimed.tif"]
    assert "modification time" in out[-1]

"""Faults: the daemon killed at its most delicate moments, its output disk filling up, its acquisition folder
vanishing, its ZMQ peer dying.

* **SIGKILL at a chosen point** (nothing of the daemon's own clean-up runs): while the library of a promoted
  model is being saved, just after that library is committed, between the library and its version record,
  in the middle of writing an output TIFF, and between an output file and its catalogue record. The point is
  reached deterministically: the daemon process starts with a ``sitecustomize`` module on its ``PYTHONPATH``
  (:data:`KILL_HOOK`, active only when ``REFSCOPE_TEST_KILL_AT`` is set) that wraps one function of the daemon
  so that it kills its own process there -- the product code has no test hook. After a restart on the same
  folders: the state folder holds the last good model (the old one, or the new one complete, never a mix and
  never unloadable), no temporary file is left, the catalogue passes SQLite's integrity check, every output
  is a complete TIFF and every LR input has exactly one output.
* **the output disk filling up**: on a real 3 MiB tmpfs when this process may mount one (root), else with
  output writes failing with ENOSPC halfway through: the daemon counts the failed writes (``write_disk_full``),
  keeps serving, writes again once space is back, and after a restart back-fills the frames whose writes failed;
* **the acquisition folder** deleted and created again, then replaced by another folder, while the daemon runs;
* **the ZMQ peer** killed with SIGKILL, and another peer connecting later.

``check_restarted`` (the invariants after a crash), :data:`KILL_HOOK` and ``hook_environment`` are also used by
``benchmarks/bench_reliability.py``, which kills the daemon many times over, at random moments and at these
points.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from refscope.daemon.publish import folder as publish_folder_module
from refscope.daemon.atomic import TEMP_MARKER, atomic_writer
from refscope.daemon.state.catalogue import Catalogue
from refscope.daemon.learn.learner import MODEL_VERSION_FILE, _write_version, load_initial
from refscope.daemon.state.model_store import MODEL_STATE_NAME, save_model
from refscope.daemon.service.daemon import Daemon
from refscope.daemon.offline.simulate import SimulatedMicroscope, SimulatorConfig
from refscope.daemon.state.store import state_paths
from refscope.daemon.images import read_image
from refscope.models.library import LibraryConfig
from refscope.models.pipeline import FitConfig, fit
from refscope.models.simulator import Optics, Session
from refscope.models.synthetic import make_pair
from test_restart import DaemonProcess, put_frame
from tests.daemon.service.test_service import FAST_FOLDER, control_status, make_config
from waiting import wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL and POSIX file semantics")

LR_NM, HR_NM = 10.0, 5.0
LR_SHAPE = (160, 200)

KILL_HOOK = r'''"""refscope test hook (tests/daemon/test_faults.py): SIGKILL this process at $REFSCOPE_TEST_KILL_AT."""
import os
import signal

_POINT = os.environ.get("REFSCOPE_TEST_KILL_AT")


def _die():
    with open(os.environ["REFSCOPE_TEST_KILL_MARK"], "w") as handle:
        handle.write(_POINT)
    os.kill(os.getpid(), signal.SIGKILL)


if _POINT in ("library_saving", "library_saved"):
    # library_saving: the new library arrays are written, their manifest (the commit point) is not;
    # library_saved: the manifest is written, nothing after it
    from refscope.daemon.state import store as state_store

    _write_json = state_store.atomic_write_json

    def _atomic_write_json(path, obj, **kwargs):
        if os.path.basename(path) == "library.json":
            if _POINT == "library_saving":
                _die()
            _write_json(path, obj, **kwargs)
            _die()
        return _write_json(path, obj, **kwargs)

    state_store.atomic_write_json = _atomic_write_json
elif _POINT == "version_record":  # the library is saved, model_version.json not yet written
    from refscope.daemon.learn import learner

    learner._write_version = lambda *args, **kwargs: _die()
elif _POINT in ("output_partial", "output_uncatalogued"):
    # on the 3rd output: half a TIFF in the temporary file / the complete file, before the catalogue hears of it
    from refscope.daemon import atomic
    from refscope.daemon.publish import folder as publish_folder

    _write_tiff = publish_folder.write_tiff
    _calls = [0]

    def _write(path, image, **kwargs):
        _calls[0] += 1
        if _calls[0] < 3:
            return _write_tiff(path, image, **kwargs)
        if _POINT == "output_partial":
            with atomic.atomic_writer(path) as handle:
                handle.write(b"II*\x00" + bytes(4096))
                handle.flush()
                _die()
        _write_tiff(path, image, **kwargs)
        _die()

    publish_folder.write_tiff = _write
'''


# ------------------------------------------------------------------------------------------------ helpers


def hook_environment(folder: Path, mark: Path) -> dict[str, str]:
    """Write :data:`KILL_HOOK` into ``folder``; the environment variables that put it on the ``PYTHONPATH`` of a
    process (``mark``: the file it writes its kill point to, also the tag of its processes)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(KILL_HOOK)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])),
            "REFSCOPE_TEST_KILL_MARK": str(mark)}


@pytest.fixture()
def kill_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """:data:`KILL_HOOK` on the ``PYTHONPATH`` of the processes this test starts."""
    for name, value in hook_environment(tmp_path / "hook", tmp_path / "killed_at").items():
        monkeypatch.setenv(name, value)


def kill_daemon_at(point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next daemon process started kill itself at ``point`` (see :data:`KILL_HOOK`)."""
    monkeypatch.setenv("REFSCOPE_TEST_KILL_AT", point)


def library_sha(state: Path) -> str:
    """The checksum of the library committed in ``state`` (from its manifest)."""
    manifest = json.loads(state_paths(state, MODEL_STATE_NAME)[1].read_text())
    return manifest["refscope_state"]["npz_sha256"]


def save_initial_model(state: Path) -> str:
    """Fit a model on a synthetic specimen and save it as version 1, as the learner does; its checksum."""
    pair = make_pair(rng=np.random.default_rng(0), lr_shape=LR_SHAPE, factor=2.0, lr_pixel_size_nm=LR_NM)
    model = fit(pair.lr, [(pair.hr, 2.0)], config=FitConfig(scale=2, library=LibraryConfig(size=2000)))
    save_model(state, model, sources=["synthetic-lr", "synthetic-hr"])
    _write_version(state, 1, 1.0, len(model.library), ["synthetic-lr", "synthetic-hr"])
    return library_sha(state)


def temporary_files(*folders: Path) -> list[Path]:
    """refscope's own temporary files (``.name.tmp-<hex>``) left in ``folders``."""
    return [p for folder in folders if folder.exists() for p in folder.iterdir() if TEMP_MARKER in p.name]


def check_restarted(watch: Path, out: Path, state: Path, lr_names: list[str]) -> tuple[int, str | None]:
    """The invariants after a crash and a clean restart and stop: the saved model loads (returns its version
    and library checksum), no temporary file, a sound catalogue that has every LR input enhanced, and exactly one
    complete output TIFF per LR input."""
    _, version = load_initial(state)  # raises when the state is corrupt or half-written
    sha = library_sha(state) if state_paths(state, MODEL_STATE_NAME)[1].exists() else None
    assert not temporary_files(out, state), temporary_files(out, state)
    with Catalogue.in_state_dir(state) as catalogue:
        assert catalogue.integrity_check() == "ok"
        for name in lr_names:
            record = catalogue.frame(str(watch / name))
            assert record is not None and record.status == "enhanced", (name, record)
    sources = []
    for path in sorted(p for p in out.iterdir() if p.is_file() and not p.name.startswith(".")):
        image = read_image(path)  # complete and readable
        assert image.data.ndim == 2 and image.metadata.extra.get("kind") == "enhanced", path
        sources.append(image.metadata.extra["source"])
    assert sorted(sources) == sorted(str(watch / n) for n in lr_names), "not exactly one output per LR input"
    return version, sha


def _folders(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    watch, out, staging = tmp_path / "in", tmp_path / "out", tmp_path / "staging"
    for folder in (watch, staging):
        folder.mkdir()
    return watch, out, out / ".refscope-state", staging


def leftover_processes(mark: Path) -> list[int]:
    """Processes (other than this one) started with ``REFSCOPE_TEST_KILL_MARK=mark``: a killed daemon's
    children (its background trainer) must not outlive it."""
    needle = f"REFSCOPE_TEST_KILL_MARK={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_children_gone(mark: Path) -> None:
    """Wait until no process tagged ``mark`` (a killed daemon's children) is left."""
    wait_for(lambda: not leftover_processes(mark), 15,
             f"the killed daemon's children gone ({leftover_processes(mark)})", interval=0.2)


def _wait_killed(daemon: DaemonProcess, point: str, mark: Path, what: str) -> None:
    """Wait for the daemon to kill itself at ``point``; then for its children to be gone."""
    try:
        daemon.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        status = daemon.status()
        daemon.kill()
        raise AssertionError(f"the daemon never reached {point} ({what}); learner: {status['learner']}") from None
    daemon.kill()  # closes the log
    assert daemon.proc.returncode == -signal.SIGKILL and mark.read_text() == point
    wait_children_gone(mark)


# ---------------------------------------------------------------------------------------- SIGKILL points


@pytest.mark.parametrize(("point", "new_model"), [
    ("library_saving", False), ("library_saved", True),
    pytest.param("version_record", True, marks=pytest.mark.slow),  # 15-30 s on 2 busy cores; covered by the benchmark
])
def test_sigkill_during_a_model_promotion(tmp_path, kill_hook, monkeypatch, point, new_model):
    """Killed while a better model is being saved: on restart the old model (v1) or the new one (v2) serves,
    complete and verified, and frames are enhanced again."""
    watch, out, state, staging = _folders(tmp_path)
    old_sha = save_initial_model(state)
    specimen = make_pair(rng=np.random.default_rng(11), lr_shape=LR_SHAPE, factor=2.0, lr_pixel_size_nm=LR_NM)
    noise = np.random.default_rng(5)

    def lr(i: int) -> str:
        name = f"frame_{i:03d}.tif"
        put_frame(watch, staging, name, specimen.lr + noise.normal(0, 0.003, LR_SHAPE), LR_NM)
        return name

    kill_daemon_at(point, monkeypatch)
    first = DaemonProcess(watch, out, tmp_path / "daemon.log")
    assert first.status()["model_version"] == 1
    names = []
    for i in range(3):
        names.append(lr(i))
        time.sleep(0.2)
    wait_for(lambda: len(list(out.glob("frame_*.tif"))) == 3, 30, "3 outputs before the reference")
    put_frame(watch, staging, "ref_000.tif", specimen.hr, HR_NM)  # learned, better than v1 on this specimen: promoted
    names.append("ref_000.tif")  # finer by its pixel size only: also a live frame (zoom series), enhanced once
    _wait_killed(first, point, tmp_path / "killed_at", "a promotion")

    _, version = load_initial(state)  # what the restart will find
    assert (version, library_sha(state) != old_sha) == ((2, True) if new_model else (1, False))
    monkeypatch.delenv("REFSCOPE_TEST_KILL_AT")
    second = DaemonProcess(watch, out, tmp_path / "daemon.log")
    try:
        assert second.status()["model_version"] == version
        names.append(lr(3))
        wait_for(lambda: (out / "frame_003_x2.tif").exists(), 30, "frame 3 enhanced after the restart")
        wait_for(lambda: (out / "ref_000_x2.tif").exists(), 30, "the zoomed-in frame enhanced")
        assert read_image(out / "frame_003_x2.tif").metadata.extra["model_version"] == version
    finally:
        assert second.terminate() == 0
    assert check_restarted(watch, out, state, names) == (version, library_sha(state))
    assert (library_sha(state) == old_sha) is not new_model
    if not new_model:  # the version record still describes the library it was written for
        assert json.loads((state / MODEL_VERSION_FILE).read_text())["library_sha256"] == old_sha


@pytest.mark.parametrize("point", ["output_partial", "output_uncatalogued"])
def test_sigkill_during_an_output_write(tmp_path, kill_hook, monkeypatch, point):
    """Killed halfway through an output TIFF, or just after it and before the catalogue knows: on restart the
    temporary file is gone and the frame is enhanced again into one complete file (replaced, not duplicated)."""
    watch, out, state, staging = _folders(tmp_path)
    specimen = make_pair(rng=np.random.default_rng(11), lr_shape=LR_SHAPE, factor=2.0, lr_pixel_size_nm=LR_NM)
    names = [f"frame_{i:03d}.tif" for i in range(6)]
    kill_daemon_at(point, monkeypatch)
    first = DaemonProcess(watch, out, tmp_path / "daemon.log")
    for name in names[:4]:
        put_frame(watch, staging, name, specimen.lr, LR_NM)
        time.sleep(0.2)
    _wait_killed(first, point, tmp_path / "killed_at", "the third output")
    third = out / "frame_002_x2.tif"
    if point == "output_partial":
        assert not third.exists() and len(temporary_files(out)) == 1  # half a TIFF, never under its final name
    else:
        assert read_image(third).data.shape == (2 * LR_SHAPE[0], 2 * LR_SHAPE[1])
        with Catalogue.in_state_dir(state) as catalogue:
            assert catalogue.frame(str(watch / "frame_002.tif")).status == "received"

    monkeypatch.delenv("REFSCOPE_TEST_KILL_AT")
    second = DaemonProcess(watch, out, tmp_path / "daemon.log")
    try:
        for name in names[4:]:
            put_frame(watch, staging, name, specimen.lr, LR_NM)
        wait_for(lambda: len(list(out.glob("frame_*.tif"))) == len(names), 30, "every frame enhanced")
        status = second.status()
        assert status["errors_by_reason"] == {}
        assert status["publish"]["folder"]["replaced"] == (1 if point == "output_uncatalogued" else 0)
    finally:
        assert second.terminate() == 0
    assert check_restarted(watch, out, state, names)[0] == 0


def test_restart_keeps_the_roles_of_files_seen_before(tmp_path):
    """After a restart the folder is read again from the start: an HR reference whose name sorts before the LR
    frames comes first, before any LR pixel size is known. It keeps the role it was given (a reference and, being
    finer by its pixel size only, a live frame of a zoom series): skipped as already handed to the learner and as
    already enhanced, never learned or enhanced twice."""
    watch, out, staging = tmp_path / "in", tmp_path / "out", tmp_path / "staging"
    watch.mkdir()
    staging.mkdir()
    specimen = make_pair(rng=np.random.default_rng(11), lr_shape=(96, 128), factor=2.0, lr_pixel_size_nm=LR_NM)
    config = make_config(tmp_path, **{"ingest.watch": str(watch), "publish.out_dir": str(out)})
    with Daemon(config, folder_options=FAST_FOLDER) as daemon:
        for i in range(2):
            put_frame(watch, staging, f"scan_{i:03d}.tif", specimen.lr, LR_NM)
        wait_for(lambda: len(list(out.glob("*.tif"))) == 2, 20, "2 outputs")
        put_frame(watch, staging, "a_reference.tif", specimen.hr, HR_NM)  # sorts first
        wait_for(lambda: daemon.status().frames.in_hr == 1, 20, "the reference taken as HR")
        learner = daemon.learner
        wait_for(lambda: (lambda s: s.pairs_learned + s.references_rejected == 1 and not s.busy)(learner.status()),
                 60, "the reference learned (a reference not learned yet is learned again after a restart)")
        wait_for(lambda: (out / "a_reference_x2.tif").exists(), 20, "the zoomed-in frame enhanced")
    with Daemon(config, folder_options=FAST_FOLDER) as daemon:
        wait_for(lambda: daemon.status().frames.in_ == 3, 20, "the folder read again")
        put_frame(watch, staging, "scan_002.tif", specimen.lr, LR_NM)
        wait_for(lambda: (out / "scan_002_x2.tif").exists(), 20, "the new frame enhanced")
        status = daemon.status()
        assert status.frames.skipped == {"already_seen": 1, "already_enhanced": 3}
        assert status.frames.in_hr == 1 and status.frames.in_both == 1
    assert sorted(p.name for p in out.glob("*.tif")) == ["a_reference_x2.tif"] + [f"scan_{i:03d}_x2.tif" for i in range(3)]


# ----------------------------------------------------------------------------------------- disk full


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          check=False)
    return done.returncode == 0


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` up to the last byte; returns the filler file."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as handle:  # unbuffered: nothing left to flush at close
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    handle.write(bytes(chunk))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


@pytest.fixture(params=["tmpfs", "enospc"])
def small_disk(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """An output folder on a disk that the test can fill (``fill()``) and empty again (``free()``).

    ``tmpfs``: a real 3 MiB tmpfs (skipped where this process may not mount one); output folder and state
    folder (catalogue) both on it, as with the default ``<out>/.refscope-state``. ``enospc``: output writes
    fail with ENOSPC after writing part of their temporary file.
    """
    disk = tmp_path / "disk"
    if request.param == "tmpfs":
        if not _mount_tmpfs(disk, "3m"):
            pytest.skip("cannot mount a tmpfs here (needs root)")
        filler: list[Path] = []
        try:
            yield {"out": disk / "out", "fill": lambda: filler.append(_fill(disk)),
                   "free": lambda: filler.pop().unlink()}
        finally:
            if subprocess.run(["umount", str(disk)], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)
        return
    full = {"on": False}
    real_write = publish_folder_module.write_tiff

    def write_tiff(path, image, **kwargs):
        if full["on"]:
            with atomic_writer(path) as handle:
                handle.write(b"II*\x00" + bytes(8192))
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, image, **kwargs)

    monkeypatch.setattr(publish_folder_module, "write_tiff", write_tiff)
    yield {"out": disk / "out", "fill": lambda: full.update(on=True), "free": lambda: full.update(on=False)}


def test_output_disk_filling_up(tmp_path, small_disk):
    watch, staging = tmp_path / "in", tmp_path / "staging"
    watch.mkdir()
    staging.mkdir()
    out = small_disk["out"]
    rng = np.random.default_rng(3)
    config = make_config(tmp_path, **{"ingest.watch": str(watch), "publish.out_dir": str(out)})

    def lr(i: int) -> str:
        name = f"frame_{i:03d}.tif"
        put_frame(watch, staging, name, rng.random((64, 80)), LR_NM)
        return name

    def written() -> set[str]:
        return {p.name for p in out.glob("frame_*.tif")}

    names: list[str] = []
    with Daemon(config, folder_options=FAST_FOLDER) as daemon:
        names += [lr(0), lr(1)]
        wait_for(lambda: len(written()) == 2, 20, "2 outputs")
        small_disk["fill"]()
        names += [lr(2), lr(3), lr(4)]
        wait_for(lambda: daemon.status().errors_by_reason.get("write_disk_full", 0) == 3, 20,
                 "3 writes refused for want of space")
        status = control_status(daemon)  # the control endpoint answers; nothing else went wrong
        assert status["running"] and status["frames"]["out"] == 5 and len(written()) == 2
        assert set(status["errors_by_reason"]) <= {"write_disk_full", "catalogue_error"}
        assert not temporary_files(out)
        small_disk["free"]()
        names += [lr(5), lr(6)]
        # the 3 refused outputs are retried while the daemon runs: written without a restart
        wait_for(lambda: len(written()) == 7, 30, "writing again once there is space, the refused ones included")
        assert daemon.status().errors_by_reason["write_disk_full"] == 3
    with Daemon(config, folder_options=FAST_FOLDER) as daemon:  # restarted: nothing left to back-fill
        wait_for(lambda: daemon.status().frames.in_ == 7, 20, "the folder read again")
        assert len(written()) == 7 and daemon.status().errors_by_reason == {}
    assert written() == {n.replace(".tif", "_x2.tif") for n in names}
    assert check_restarted(watch, out, daemon.config.state_dir, names)[0] == 0


# ------------------------------------------------------------------------------- acquisition folder


def test_acquisition_folder_vanishing_and_coming_back(tmp_path):
    watch, out, staging = tmp_path / "in", tmp_path / "out", tmp_path / "staging"
    watch.mkdir()
    staging.mkdir()
    rng = np.random.default_rng(4)
    config = make_config(tmp_path, **{"ingest.watch": str(watch), "publish.out_dir": str(out)})

    def lr(name: str) -> None:
        put_frame(watch, staging, name, rng.random((64, 80)), LR_NM)

    def outputs() -> set[str]:
        return {p.name for p in out.glob("*.tif")}

    with Daemon(config, folder_options=FAST_FOLDER) as daemon:
        lr("a_000.tif")
        lr("a_001.tif")
        wait_for(lambda: len(outputs()) == 2, 20, "2 outputs")

        shutil.rmtree(watch)  # deleted (e.g. the acquisition software clears its folder)
        source = next(iter(daemon.status().ingest))
        wait_for(lambda: "missing" in (daemon.status().ingest[source].last_error or ""), 10,
                 "the missing folder noticed")
        time.sleep(0.5)
        daemon.check()  # no component failed
        assert control_status(daemon)["running"]
        watch.mkdir()  # created again
        lr("b_000.tif")
        lr("b_001.tif")
        wait_for(lambda: len(outputs()) == 4, 20, "frames in the re-created folder enhanced")

        watch.rename(tmp_path / "in-old")  # moved away, and another folder put in its place
        (tmp_path / "in-new").mkdir()
        put_frame(tmp_path / "in-new", staging, "c_000.tif", rng.random((64, 80)), LR_NM)
        (tmp_path / "in-new").rename(watch)
        lr("c_001.tif")
        wait_for(lambda: len(outputs()) == 6, 20, "frames in the replacement folder enhanced")
        status = control_status(daemon)
        assert status["errors_by_reason"] == {} and status["frames"]["out"] == 6
    assert outputs() == {f"{s}_{i:03d}_x2.tif" for s in "abc" for i in range(2)}


# ----------------------------------------------------------------------------------------------- ZMQ peer


def test_zmq_peer_killed_and_another_connecting(tmp_path):
    out = tmp_path / "out"
    config = make_config(tmp_path, **{"ingest.zmq_endpoint": "tcp://127.0.0.1:*", "publish.out_dir": str(out)})
    with Daemon(config) as daemon:
        endpoint = daemon.endpoints["zmq_ingest"]
        peer = subprocess.Popen([sys.executable, "-m", "refscope.daemon.offline.simulate", "--zmq", endpoint, "--size", "64x64",
                                 "--interval", "0.05", "--scene-change", "none", "--seed", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: daemon.status().frames.in_ >= 5, 60, "frames from the first peer")
        finally:
            peer.send_signal(signal.SIGKILL)  # gone without closing its socket
            peer.wait(timeout=10)
        time.sleep(0.5)
        first = daemon.status().frames.in_
        daemon.check()
        assert control_status(daemon)["running"]

        sim = SimulatedMicroscope(SimulatorConfig(optics=Optics(lr_shape=(64, 64)),
                                                  session=Session(scene_change_s=None), frame_interval_s=0.05,
                                                  seed=2, push_endpoint=endpoint))
        with sim:
            wait_for(lambda: daemon.status().frames.in_ >= first + 5, 30, "frames from the second peer")
        sent = sim.stats().frames
        wait_for(lambda: daemon.status().frames.in_ == first + sent, 10, "every frame of the second peer")
        wait_for(lambda: daemon.status().frames.written == first + sent, 20, "every frame written")
        status = control_status(daemon)
        assert status["errors_by_reason"] == {} and sim.stats().errors == 0
    assert len(list(out.glob("*.tif"))) == first + sent

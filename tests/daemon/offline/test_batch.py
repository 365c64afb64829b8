"""``refscope batch`` on Dask: identical to ``refscope enhance`` frame by frame (oracle: enhance's own output
files), on a LocalCluster of two worker processes and on local threads, for frames cut into several
overlapping blocks and for a 3-D TIFF stack; resumable; bad inputs reported one line each and skipped.

Tolerance: batch runs single-threaded ONNX Runtime sessions, and is bit-identical to whole-frame serving with
such a session (asserted exactly). ``refscope enhance`` serves with all cores, and a multi-threaded session may
sum a few small reductions in another order; so against enhance's files every pixel must be within 4 float32
ulp of the frame's largest value and at least 99.9 % of the pixels bit-identical (on the development machine
all of them are, except <= 2 ulp on ~0.05 % of the pixels of the 120 x 160 stack slices)."""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile

from refscope.daemon.offline import batch, batch_compute
from refscope.daemon.offline.batch import PROGRESS_DIR, BatchConfig, load_batch_model, plan_jobs, run_batch
from refscope.daemon.offline.batch_compute import ThreadsRunner, block_tile, slab_graph
from refscope.daemon.cli import main
from refscope.daemon.config import ModelConfig, ServeConfig
from refscope.daemon.state.model_store import load_model
from refscope.daemon.serve.engine import ServingEngine
from refscope.daemon.images import read_image, write_tiff
from refscope.models.synthetic import make_pair

distributed = pytest.importorskip("distributed")

LR_SHAPE = (200, 300)  # with --block 64: 3 x 4 blocks per frame
N_FRAMES = 3


def _lr(seed: int, shape: tuple[int, int] = LR_SHAPE) -> np.ndarray:
    return make_pair(rng=np.random.default_rng(seed), lr_shape=shape, factor=2.0).lr.astype(np.float32)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A paired library fitted on a small synthetic pair (as tests/daemon/cli/test_cli.py fits one)."""
    folder = tmp_path_factory.mktemp("batch_pair")
    pair = make_pair(rng=np.random.default_rng(3), lr_shape=(96, 128), factor=2.0)
    write_tiff(folder / "lr.tif", pair.lr.astype(np.float32), pixel_size_nm=pair.lr_pixel_size_nm)
    write_tiff(folder / "hr.tif", pair.hr.astype(np.float32), pixel_size_nm=pair.hr_pixel_size_nm)
    assert main(["fit", str(folder / "lr.tif"), str(folder / "hr.tif"), "-o", str(folder / "state"),
                 "--library-size", "1000"]) == 0
    return folder / "state"


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("batch_frames")
    for i in range(N_FRAMES):
        write_tiff(folder / f"frame_{i}.tif", _lr(40 + i), pixel_size_nm=10.0)
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 5-slice ImageJ stack (slice 2 constant, as a blanked beam) and its slices as LR frames."""
    volume = np.stack([_lr(60 + z, (120, 160)) for z in range(5)])
    volume[2] = 7.0
    folder = tmp_path_factory.mktemp("batch_stack")
    path = folder / "volume.tif"
    tifffile.imwrite(path, volume, imagej=True, resolution=(100.0, 100.0), metadata={"unit": "micron", "axes": "ZYX"})
    return path, volume


@pytest.fixture(scope="module")
def enhanced(state: Path, frames: Path, stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The oracle: `refscope enhance` of every frame and of every non-constant stack slice saved alone."""
    slices = tmp_path_factory.mktemp("batch_slices")
    for z, image in enumerate(stack[1]):
        if z != 2:
            write_tiff(slices / f"slice_{z}.tif", image, pixel_size_nm=10.0)
    out = tmp_path_factory.mktemp("batch_enhanced")
    assert main(["enhance", str(state), str(frames), str(slices), "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster of two single-threaded worker processes for the module."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as local:
        yield local


def _assert_same_pixels(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    """Equal within float32 rounding (see the module docstring): <= 4 ulp of max |theirs|, >= 99.9 % identical."""
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == np.float32, what
    ulp = float(np.spacing(np.abs(theirs).max()))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=4 * ulp, err_msg=what)
    assert np.mean(ours == theirs) >= 0.999, f"{what}: only {np.mean(ours == theirs):.4%} of the pixels identical"


def _same_as_enhance(out: Path, enhanced: Path, names: list[str], *, same_source: bool = True) -> None:
    for name in names:
        ours, theirs = read_image(out / name), read_image(enhanced / name)
        _assert_same_pixels(ours.data, theirs.data, name)
        assert ours.pixel_size_nm == theirs.pixel_size_nm == pytest.approx(5.0)
        assert not same_source or ours.metadata.extra == theirs.metadata.extra


def test_block_tile_keeps_the_block_count_and_the_models_alignment() -> None:
    """--block caps the core; the cores are spread evenly, aligned to the model's grid, at least twice its halo."""
    from refscope.daemon.serve.served_model import ServedModel

    plain = ServedModel(method="net", scale=2, halo=5, align=1, workspace_bytes_per_px=1.0)
    assert block_tile((200, 300), plain, 64) == 60  # 4 x 5 cores of <= 64, as few as 64 px blocks need
    assert block_tile((300, 150), plain, 256) == 150
    aligned = ServedModel(method="net", scale=2, halo=45, align=8, workspace_bytes_per_px=1.0)
    assert block_tile((1000, 1000), aligned, 64) == 96  # 2 x halo = 90, rounded up to the alignment


def test_batch_on_local_cluster_matches_enhance(state, frames, enhanced, cluster, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["batch", str(state), str(frames), "-o", str(out), "--scheduler", cluster.scheduler_address,
                 "--block", "64", "--quiet"])
    assert code == 0, capsys.readouterr().err
    names = [f"frame_{i}_x2.tif" for i in range(N_FRAMES)]
    _same_as_enhance(out, enhanced, names)
    spec, _ = load_batch_model(state, None)
    engine = ServingEngine(ModelConfig(scale=2, method="paired"), ServeConfig(intra_op_threads=1))
    engine.set_model(load_model(state), version=1)
    for i, name in enumerate(names):  # bit-identical to single-threaded whole-frame serving, 3 x 4 blocks or not
        whole = engine.enhance(read_image(frames / f"frame_{i}.tif").data.astype(np.float64)).image
        assert np.array_equal(read_image(out / name).data, whole), name
    graph = slab_graph(ThreadsRunner(1).source(np.zeros((1, *LR_SHAPE), np.float32)), spec, block_px=64,
                       constant={})
    assert graph.numblocks == (1, 4, 5) and spec.halo < 64
    with distributed.Client(cluster) as client:  # both worker processes loaded the model from its bytes
        loaded = client.run(lambda: sorted(batch_compute._MODELS))
    assert len(loaded) == 2 and all(spec.key in keys for keys in loaded.values())


def test_batch_stack_on_local_cluster(state, stack, enhanced, cluster, tmp_path, capsys) -> None:
    path, _ = stack
    before = path.read_bytes()
    out = tmp_path / "out"
    code = main(["batch", str(state), str(path), "-o", str(out), "--scheduler", cluster.scheduler_address,
                 "--z-block", "2", "--block", "64"])
    assert code == 0, capsys.readouterr().err
    assert "volume.tif -> " in capsys.readouterr().out
    result = tifffile.imread(out / "volume_x2.tif")
    assert result.shape == (5, 240, 320) and result.dtype == np.float32
    for z in (0, 1, 3, 4):
        _assert_same_pixels(result[z], read_image(enhanced / f"slice_{z}_x2.tif").data, f"slice {z}")
    assert np.all(result[2] == 7.0)
    first = read_image(out / "volume_x2.tif", page=0)
    assert first.pixel_size_nm == pytest.approx(5.0) and first.metadata.extra["slices"] == 5
    assert path.read_bytes() == before  # the input is never modified
    assert not (out / PROGRESS_DIR / "volume_x2.tif.blocks").exists()  # blocks removed once committed


def test_resume_skips_finished_and_redoes_changed(state, frames, enhanced, tmp_path) -> None:
    inputs = tmp_path / "in"
    shutil.copytree(frames, inputs)
    out = tmp_path / "out"
    spec, _ = load_batch_model(state, "paired")
    quiet = BatchConfig(quiet=True)

    def run(model=spec):
        return run_batch(model, plan_jobs([str(inputs)], out, spec.scale), ThreadsRunner(2, progress=False), quiet)

    first = run()
    assert (first.written, first.skipped, first.zblocks_computed, first.exit_code) == (N_FRAMES, 0, N_FRAMES, 0)
    _same_as_enhance(out, enhanced, [f"frame_{i}_x2.tif" for i in range(N_FRAMES)], same_source=False)  # threads
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")}
    again = run()
    assert (again.written, again.skipped, again.zblocks_computed) == (0, N_FRAMES, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")} == stamps
    (out / "frame_1_x2.tif").unlink()
    source = inputs / f"frame_{N_FRAMES - 1}.tif"
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))  # a changed input
    redo = run()
    assert (redo.written, redo.skipped) == (2, N_FRAMES - 2)
    assert (out / "frame_0_x2.tif").stat().st_mtime_ns == stamps["frame_0_x2.tif"]
    changed = run(replace(spec, key="0" * 64))  # another model invalidates every output
    assert (changed.written, changed.skipped) == (N_FRAMES, 0)


def test_interrupted_stack_resumes_from_its_blocks(state, stack, enhanced, tmp_path, monkeypatch) -> None:
    path, _ = stack
    out = tmp_path / "out"
    spec, _ = load_batch_model(state, "paired")
    config = BatchConfig(z_block=2, block_px=64, quiet=True)

    def run():
        return run_batch(spec, plan_jobs([str(path)], out, spec.scale), ThreadsRunner(2, progress=False), config)

    monkeypatch.setattr(batch, "_finish", lambda *args, **kwargs: None)  # killed before the stack is assembled
    cut = run()
    assert (cut.written, cut.zblocks_computed) == (0, 3)
    blocks = sorted((out / PROGRESS_DIR / "volume_x2.tif.blocks").glob("*.npy"))
    assert [b.name for b in blocks] == ["z00000-00002.npy", "z00002-00004.npy", "z00004-00005.npy"]
    monkeypatch.undo()
    blocks[1].unlink()
    resumed = run()
    assert (resumed.written, resumed.zblocks_computed, resumed.zblocks_reused) == (1, 1, 2)
    result = tifffile.imread(out / "volume_x2.tif")
    for z in (0, 1, 3, 4):
        _assert_same_pixels(result[z], read_image(enhanced / f"slice_{z}_x2.tif").data, f"slice {z}")
    done = run()
    assert (done.written, done.skipped, done.zblocks_computed) == (0, 1, 0)


def test_bad_inputs_are_reported_and_skipped(state, frames, tmp_path, capsys) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in (0, 1):
        shutil.copy(frames / f"frame_{i}.tif", folder)
    (folder / "notes.tif").write_text("this is not an image\n")
    tifffile.imwrite(folder / "rgb.tif", np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(folder / "hyper.tif", np.ones((2, 3, 40, 50), np.float32), imagej=True,
                     metadata={"axes": "ZCYX"})
    out = tmp_path / "out"
    assert main(["batch", str(state), str(folder), "-o", str(out), "--quiet"]) == 1  # some failed
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("refscope batch: error:")]
    assert sorted(line.split(": ")[2] for line in errors) == sorted(
        str(folder / name) for name in ("hyper.tif", "notes.tif", "rgb.tif"))
    assert "is not a TIFF or PNG" in "".join(errors) and "(Z, Y, X)" in "".join(errors)
    assert sorted(p.name for p in out.glob("*.tif")) == ["frame_0_x2.tif", "frame_1_x2.tif"]

    assert main(["batch", str(state), str(folder / "notes.tif"), "-o", str(tmp_path / "one.tif")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"refscope batch: error: {folder / 'notes.tif'}: ")
    assert main(["batch", str(tmp_path / "nowhere"), str(folder), "-o", str(out)]) == 2
    assert "no such state folder" in capsys.readouterr().err
    assert main(["batch", str(state), str(folder), "-o", str(out), "--scheduler", "fast"]) == 2
    assert "--scheduler" in capsys.readouterr().err


def test_batch_warns_about_a_frame_outside_the_models_domain_and_strict_refuses_it(state, tmp_path, capsys):
    """Issue 15.2 in batch: as enhance, a warning naming pixel size and bit depth; --strict refuses (exit 2)."""
    folder = tmp_path / "in"
    folder.mkdir()
    foreign = folder / "zeiss_like.tif"
    write_tiff(foreign, np.clip(_lr(70) * 250, 0, 255).astype(np.uint8), pixel_size_nm=4.0)
    assert main(["batch", str(state), str(foreign), "-o", str(tmp_path / "a.tif"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {foreign}: outside the model's domain" in err
    assert "pixel size 4 nm" in err and "pixel type uint8" in err
    assert main(["batch", str(state), str(foreign), "-o", str(tmp_path / "b.tif"), "--quiet", "--strict"]) == 2
    assert "(--strict)" in capsys.readouterr().err and not (tmp_path / "b.tif").exists()
    inside = folder / "inside.tif"
    write_tiff(inside, _lr(71), pixel_size_nm=10.0)
    assert main(["batch", str(state), str(inside), "-o", str(tmp_path / "c.tif"), "--quiet", "--strict"]) == 0
    assert "warning" not in capsys.readouterr().err

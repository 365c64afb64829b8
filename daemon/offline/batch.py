"""``refscope batch``: reprocess frames, folders and TIFF stacks with a session's model on Dask, resumably.

::

    refscope batch STATE_DIR INPUT... -o OUT [--method paired|net|best] [--scheduler threads|processes|tcp://H:P]
                   [--workers N] [--block LR_PX] [--z-block N] [--quiet]

Inputs and outputs
    Files and folders are expanded and named exactly as ``refscope enhance`` names them (:func:`refscope.daemon.cli._expand`,
    :func:`refscope.daemon.offline.files.plan_outputs`): ``OUT/<stem>_x<S>.tif``, or ``OUT`` itself for one input file and ``OUT``
    ending in ``.tif``. A 2-D frame gives a 2-D float32 TIFF identical to ``refscope enhance``'s output. A 3-D
    TIFF stack (series axes ``ZYX``/``QYX``/``TYX``..., e.g. an ImageJ stack or a FIB-SEM volume) is enhanced
    slice by slice (each z-slice one LR frame) into **one 3-D ImageJ TIFF** ``<stem>_x<S>.tif`` of shape
    (Z, S·H, S·W), pixel size divided by S; slice z equals ``refscope enhance`` of that slice saved alone.
    Stacks are read as stored (no vendor data-bar cropping, no palette); a constant slice (beam blanked) is
    served as that constant, as the daemon does. Inputs are only read, never modified.

Resuming
    A hidden ``.refscope-batch/`` folder beside the outputs holds one small record per output
    (``<output name>.json``: input path, size, mtime, model checksum, scale, shape, z-block size) written
    atomically *after* the output. A re-run skips every output whose record matches and whose file is still
    there with the recorded size and mtime; a changed input or model (or a deleted output) is redone. A volume
    is computed in z-blocks of ``--z-block`` slices (default: at most 64 MiB of output, at most 16 slices),
    each saved atomically as ``<output name>.blocks/z<z0>-<z1>.npy``; an interrupted volume resumes from its
    finished blocks (a deleted block is recomputed) and the block files are removed once the 3-D TIFF is
    committed.

Errors and exit codes
    A bad input (unreadable TIFF, wrong rank, RGB, NaN...) is reported on stderr as one line
    ``refscope batch: error: <file>: <problem>`` and skipped; the other inputs are processed. Exit code 0:
    every output written or already done; 1: some inputs failed, the others were written; 2: nothing was
    done (every input failed, or a bad state folder, argument or scheduler).

The model is the :class:`~refscope.daemon.serve.served_model.ServedModel` ``refscope enhance`` serves, tiled with
the same halo and alignment (its own) by the same tiling code (:func:`refscope.models.tiling.tile_plan`), and each
assembled frame (each slice of a volume) is pulled toward the state's safe baseline where the model is not trusted
as enhance and the daemon do it (:func:`load_safe_library`, :func:`refscope.models.safe_blend.blend_with_library`),
so batch and enhance give the same pixels. The Dask graphs, model distribution and schedulers live in :mod:`refscope.daemon.offline.batch_compute`, stack files and resume
records in :mod:`refscope.daemon.offline.batch_files`, the arguments and ``--scheduler`` in :mod:`refscope.daemon.cli.batch`.
"""
from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refscope.models.pipeline import FittedModel
from refscope.models.safe_blend import blend_with_library

from ..atomic import atomic_write_json, atomic_writer
from .batch_compute import slab_graph
from .batch_files import (DEFAULT_BLOCK_PX, MIN_BLOCK_PX, PROGRESS_DIR, RECORD_FORMAT, block_ok, output_done,
                          probe_input, read_record, read_slices, same_key, write_stack)
from ..errors import InputFileError, RefscopeError, StateError
from ..serve.served_model import ServedModel, bicubic_model, onnx_model
from ..state.model_domain import ModelDomain, check_domain
from ..state.provenance import model_id, provenance
from ..images import acquisition_metadata, output_pixels, read_image, write_tiff

__all__ = ["BatchConfig", "BatchJob", "BatchReport", "PROGRESS_DIR", "load_batch_model", "plan_jobs", "run_batch"]

log = logging.getLogger("refscope.batch")
_Z_BLOCK_BYTES = 64 * 2**20
_MAX_Z_BLOCK = 16


@dataclass(frozen=True)
class BatchConfig:
    """Options of one batch run.

    Attributes:
        block_px: block (tile core) side in LR px (>= 64); raised to twice the model's halo, rounded up to its
            alignment, then spread evenly over the frame (:func:`~refscope.daemon.offline.batch_compute.block_tile`).
        z_block: slices per resumable block of a volume (>= 1); None: at most 64 MiB of output and 16 slices.
        quiet: no progress bar and no per-file lines (errors and nothing else on the terminal).
        domain: the model's domain (:mod:`refscope.daemon.state.model_domain`); a frame outside it gets a warning naming what differs,
            or with ``strict`` is refused (a failed input).
    """

    block_px: int = DEFAULT_BLOCK_PX
    z_block: int | None = None
    quiet: bool = False
    domain: ModelDomain | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        if int(self.block_px) != self.block_px or self.block_px < MIN_BLOCK_PX:
            raise ValueError(f"--block: must be an integer of at least {MIN_BLOCK_PX} LR px, got {self.block_px!r}")
        if self.z_block is not None and (int(self.z_block) != self.z_block or self.z_block < 1):
            raise ValueError(f"--z-block: must be an integer >= 1, got {self.z_block!r}")


@dataclass(frozen=True)
class BatchJob:
    """One input and the output it goes to (named as ``refscope enhance`` names it)."""

    source: Path
    output: Path


@dataclass
class BatchReport:
    """What a run did: outputs ``written`` now, ``skipped`` (already done) and ``failed``; frames and z-blocks of
    stacks computed now (``zblocks_computed``, a frame counts as one) and reused from an interrupted run;
    ``output_px`` computed now; ``seconds`` of wall time; one ``errors`` line per failed input."""

    written: int = 0
    skipped: int = 0
    failed: int = 0
    zblocks_computed: int = 0
    zblocks_reused: int = 0
    output_px: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0: all done; 1: some inputs failed, others done; 2: nothing done and something failed."""
        if not self.failed:
            return 0
        return 1 if self.written or self.skipped else 2


# ------------------------------------------------------------------------------------------------- model


def load_batch_model(state_dir: str | Path, method: str | None, *,
                     self_ensemble: int = 1) -> tuple[ServedModel, str]:
    """The :class:`~refscope.daemon.serve.served_model.ServedModel` that ``refscope enhance STATE_DIR --method M
    --self-ensemble N`` serves, and a label for it (``self_ensemble``: passes of the network averaged; the
    library and bicubic ignore it).

    ``method`` None is ``best`` once a network exists, else ``paired`` (as enhance); ``best`` is resolved
    through ``best.json``. Raises :class:`StateError` for a missing or unusable state folder.
    """
    from .net import has_net, resolve_method, served_net

    folder = Path(state_dir)
    if not folder.is_dir():
        raise StateError(f"{folder}: no such state folder; create one with `refscope fit LR.tif HR.tif -o {folder}`")
    requested = method or ("best" if has_net(folder) else "paired")
    resolved = resolve_method(folder, requested)
    label = f"best = {resolved}" if requested == "best" else resolved
    log.info("%s: batch serves %s (requested %s)", folder, resolved, requested)
    if resolved == "net":
        return served_net(folder).asked_ensemble(self_ensemble, log), label
    from ..state.model_store import load_model
    from ..state.net_store import load_served
    from ..state.store import has_state

    if resolved == "bicubic":
        scale = load_model(folder).scale if has_state(folder, "library") else load_served(folder)[1].scale
        return bicubic_model(scale), label
    if resolved != "paired":
        raise ValueError(f"--method: batch serves paired, net or best (net, paired or bicubic), not {resolved!r}")
    from refscope.models.paired_net import export_paired_model

    from ..serve.onnx_cache import cached_export
    from ..serve.runtime import check_model_bytes

    model = load_model(folder)
    # what `refscope enhance` serves: model version 1, from (or into) the state folder's export cache
    data, manifest = cached_export(folder, model, "1", lambda: export_paired_model(model, version="1"),
                                   check=check_model_bytes)
    return onnx_model(data, manifest, method="paired", model_id=model_id(folder, "paired")), label


def load_safe_library(state_dir: str | Path, spec: ServedModel) -> FittedModel | None:
    """The state's paired library when outputs of ``spec`` are pulled toward its safe baseline, as ``refscope
    enhance`` pulls them (a library or network output, a library with a safe baseline at ``spec``'s scale),
    else None."""
    from ..state.model_store import load_model
    from ..state.store import has_state

    folder = Path(state_dir)
    if spec.method not in ("paired", "net") or not has_state(folder, "library"):
        return None
    library = load_model(folder)
    return library if library.safe is not None and library.scale == spec.scale else None


def _blended(image: np.ndarray, lr: np.ndarray | None, library: FittedModel | None) -> np.ndarray:
    """``image`` (float32, one frame, made from the LR pixels ``lr``) pulled toward ``library``'s safe baseline,
    as the serving engine does."""
    if library is None:
        return image
    out = np.array(image, dtype=np.float32)
    blend_with_library(out, lr, library)
    return out


# ------------------------------------------------------------------------------------------------- inputs


def plan_jobs(inputs: list[str], out: str | Path, scale: int) -> list[BatchJob]:
    """Inputs (files, folders) and their outputs, as ``refscope enhance`` plans them; creates the output folder."""
    from .files import expand_inputs, plan_outputs

    files = expand_inputs([str(i) for i in inputs], scale)
    out_path = Path(out)
    single = len(files) == 1 and not Path(inputs[0]).is_dir() and out_path.suffix.lower() in (".tif", ".tiff")
    outputs = plan_outputs(files, out_path, scale, single)
    (out_path.parent if single else out_path).mkdir(parents=True, exist_ok=True)
    return [BatchJob(src, dst) for src, dst in zip(files, outputs)]


# ------------------------------------------------------------------------------------------------- records


@dataclass
class _Task:
    """A job being processed: its kind, shape, resume state and z-blocks."""

    job: BatchJob
    record: dict[str, Any]
    shape: tuple[int, int, int] | None  # volumes; None for a frame until read
    z_block: int = 1
    todo: list[tuple[int, int]] = field(default_factory=list)
    remaining: int = 0
    pixel_nm: float | None = None
    failed: bool = False
    pixel_type: str | None = None  # a frame's pixel type in its file (the output's, as enhance writes it)
    source_meta: dict[str, Any] = field(default_factory=dict)  # acquisition metadata carried over, as enhance
    lr: np.ndarray | None = None  # a frame's LR pixels as read (what the safe blend uses), until it is written

    @property
    def volume(self) -> bool:
        return self.shape is not None

    @property
    def record_path(self) -> Path:
        return _record_path(self.job.output)

    @property
    def blocks_dir(self) -> Path:
        return self.job.output.parent / PROGRESS_DIR / f"{self.job.output.name}.blocks"

    def block_path(self, z0: int, z1: int) -> Path:
        return self.blocks_dir / f"z{z0:05d}-{z1:05d}.npy"


def _record_path(output: Path) -> Path:
    return output.parent / PROGRESS_DIR / f"{output.name}.json"


def _prepare(job: BatchJob, spec: ServedModel, config: BatchConfig, report: BatchReport,
             safe: FittedModel | None = None) -> _Task | None:
    """Probe ``job``, compare with its record; None when its output is already done (counted as skipped)."""
    stat = job.source.stat() if job.source.is_file() else None
    if stat is None:
        raise InputFileError(f"{job.source}: file not found" if not job.source.exists() else
                             f"{job.source}: is not a regular file")
    shape = probe_input(job.source)
    z_block = 1
    if shape is not None:
        per_slice = 4 * spec.scale ** 2 * shape[1] * shape[2]
        z_block = config.z_block or max(1, min(_MAX_Z_BLOCK, _Z_BLOCK_BYTES // per_slice))
    key = {"format": RECORD_FORMAT, "input": str(job.source.resolve()), "input_size": stat.st_size,
           "input_mtime_ns": stat.st_mtime_ns, "model": spec.key, "scale": spec.scale, "self_ensemble": spec.ensemble,
           "shape": list(shape) if shape else None, "z_block": z_block if shape else None,
           "safe_baseline": safe.safe.to_dict() if safe is not None and safe.safe is not None else None}
    previous = read_record(_record_path(job.output))
    if output_done(previous, key, job.output):
        report.skipped += 1
        return None
    task = _Task(job, {**key, "kind": "refscope-batch", "method": spec.method, "complete": False}, shape, z_block)
    task.record_path.parent.mkdir(exist_ok=True)
    if shape is None:
        task.todo = [(0, 1)]
    else:
        if not same_key(previous, key):  # another input, model or blocking: earlier blocks are void
            shutil.rmtree(task.blocks_dir, ignore_errors=True)
            atomic_write_json(task.record_path, task.record)
        task.blocks_dir.mkdir(exist_ok=True)
        first = read_image(job.source, page=0)
        check_domain(job.source, first, config.domain, strict=config.strict)  # a stack: one acquisition, one check
        task.pixel_nm = first.pixel_size_nm
        for z0 in range(0, shape[0], z_block):
            z1 = min(z0 + z_block, shape[0])
            if block_ok(task.block_path(z0, z1), (z1 - z0, spec.scale * shape[1], spec.scale * shape[2])):
                report.zblocks_reused += 1
            else:
                task.todo.append((z0, z1))
    task.remaining = len(task.todo)
    return task


def _slab(task: _Task, spec: ServedModel, config: BatchConfig, z0: int, z1: int) -> tuple[np.ndarray, dict[int, float]]:
    """The LR slab of ``task`` for ``z0:z1`` as float32 (what serving hands a model), and its constant slices."""
    if not task.volume:
        from .files import load_frame

        frame = load_frame(task.job.source)  # as enhance reads it: constant / RGB / tiny frames are errors
        check_domain(task.job.source, frame, config.domain, strict=config.strict)
        task.pixel_nm = frame.pixel_size_nm
        task.pixel_type, task.source_meta = frame.pixel_type, acquisition_metadata(frame)
        task.lr = frame.data
        return frame.data[np.newaxis].astype(np.float32), {}  # as serving hands windows to a model
    data = read_slices(task.job.source, z0, z1, task.shape)  # type: ignore[arg-type]
    flat = data.reshape(data.shape[0], -1)
    low, high = flat.min(axis=1), flat.max(axis=1)
    constant = {k: float(low[k]) for k in range(data.shape[0]) if low[k] == high[k]}
    return data.astype(np.float32), constant


# ------------------------------------------------------------------------------------------------- run


def run_batch(spec: ServedModel, jobs: list[BatchJob], runner: Any, config: BatchConfig = BatchConfig(), *,
              label: str | None = None, safe: FittedModel | None = None) -> BatchReport:
    """Enhance every job with ``spec`` on ``runner`` (:mod:`refscope.daemon.offline.batch_compute`), resuming finished work.

    ``safe``: the library whose safe baseline each output frame is pulled toward (:func:`load_safe_library`);
    None: the model's output as it is.

    Prints one line per output written (unless ``config.quiet``) and one ``refscope batch: error: ...`` line per
    failed input on stderr. Returns the counts; :attr:`BatchReport.exit_code` is the command's exit code.
    """
    start = time.perf_counter()
    report = BatchReport()
    label = label or spec.method
    tasks: list[_Task] = []
    for job in jobs:
        try:
            task = _prepare(job, spec, config, report, safe)
        except (RefscopeError, ValueError, OSError) as exc:
            _fail(report, job, exc)
            continue
        if task is not None:
            tasks.append(task)
        elif not config.quiet:
            print(f"{job.source} -> {job.output}  already done (skipped)")
    if tasks:
        runner.prepare(spec)
    total = sum(len(t.todo) for t in tasks)

    def items():
        for task in tasks:
            if not task.todo:  # every block of a volume was there: assemble it
                _finish(task, spec, label, report, config, safe)
            for z0, z1 in task.todo:
                yield (task, z0, z1), (lambda r, t=task, a=z0, b=z1: _build(r, t, spec, config, a, b))

    done = 0
    for (task, z0, z1), result in runner.results(items()):
        done += 1
        if task.failed:
            continue
        if isinstance(result, BaseException):
            task.failed = True
            _fail(report, task.job, result)
            continue
        report.zblocks_computed += 1
        report.output_px += int(result.size)
        if runner.streams and not config.quiet:  # the threads runner shows dask's ProgressBar instead
            print(f"refscope batch: {done}/{total} frames/z-blocks done", file=sys.stderr)
        try:
            if task.volume:
                with atomic_writer(task.block_path(z0, z1), "wb") as handle:
                    np.save(handle, np.ascontiguousarray(result, dtype=np.float32))
                task.remaining -= 1
                if task.remaining == 0:
                    _finish(task, spec, label, report, config, safe)
            else:
                lr, task.lr = task.lr, None
                _write_frame(task, spec, _blended(result[0], lr, safe), label, report, config)
        except (RefscopeError, ValueError, OSError) as exc:  # e.g. a full disk: this output fails, others go on
            task.failed = True
            _fail(report, task.job, exc)
    report.seconds = time.perf_counter() - start
    return report


def _build(runner: Any, task: _Task, spec: ServedModel, config: BatchConfig, z0: int, z1: int) -> Any:
    if task.failed:
        raise _Skipped()
    slab, constant = _slab(task, spec, config, z0, z1)
    return slab_graph(runner.source(slab), spec, block_px=config.block_px, constant=constant)


class _Skipped(Exception):
    """A block of an input that already failed (not reported again)."""


def _fail(report: BatchReport, job: BatchJob, exc: BaseException) -> None:
    if isinstance(exc, _Skipped):
        return
    text = " ".join((str(exc) or type(exc).__name__).split())
    if not text.startswith(str(job.source)):
        text = f"{job.source}: {text}"
    report.failed += 1
    report.errors.append(text)
    print(f"refscope batch: error: {text}", file=sys.stderr)


def _commit(task: _Task) -> None:
    """Record the output as done (after it was written atomically)."""
    stat = task.job.output.stat()
    atomic_write_json(task.record_path, {**task.record, "complete": True, "output": task.job.output.name,
                                         "output_size": stat.st_size, "output_mtime_ns": stat.st_mtime_ns})


def _write_frame(task: _Task, spec: ServedModel, image: np.ndarray, label: str, report: BatchReport,
                 config: BatchConfig) -> None:
    s = spec.scale
    pixel = task.pixel_nm / s if task.pixel_nm else None
    write_tiff(task.job.output, output_pixels(image, task.pixel_type), pixel_size_nm=pixel,  # as enhance
               metadata={"method": spec.method, "scale": s, "source": str(task.job.source),
                         **provenance(task.job.source, model=spec.model_id), **task.source_meta})
    _commit(task)
    report.written += 1
    if not config.quiet:
        size = f"{pixel:.4g} nm/px" if pixel else "uncalibrated"
        print(f"{task.job.source} -> {task.job.output}  {image.shape[0]}x{image.shape[1]} ({size}), {label} (batch)")


def _finish(task: _Task, spec: ServedModel, label: str, report: BatchReport, config: BatchConfig,
            safe: FittedModel | None = None) -> None:
    """Assemble a volume's z-blocks into its 3-D TIFF (atomically), record it, remove the blocks; each slice
    pulled toward ``safe``'s safe baseline (None: as computed)."""
    z, h, w = task.shape  # type: ignore[misc]
    s = spec.scale
    out_shape = (z, s * h, s * w)
    starts = list(range(0, z, task.z_block))

    def slices():
        for z0 in starts:
            block = np.load(task.block_path(z0, min(z0 + task.z_block, z)), mmap_mode="r")
            for k in range(block.shape[0]):
                lr = None if safe is None else read_slices(task.job.source, z0 + k, z0 + k + 1, task.shape)[0]
                yield _blended(np.asarray(block[k]), lr, safe)

    pixel = task.pixel_nm / s if task.pixel_nm else None
    try:
        write_stack(task.job.output, slices(), out_shape, pixel_size_nm=pixel,
                    metadata={"method": spec.method, "scale": s, "source": str(task.job.source), "slices": z,
                              **provenance(task.job.source, model=spec.model_id)})
        _commit(task)
    except (OSError, ValueError) as exc:
        task.failed = True
        _fail(report, task.job, StateError(f"{task.job.output}: cannot assemble the enhanced stack ({exc})"))
        return
    shutil.rmtree(task.blocks_dir, ignore_errors=True)
    report.written += 1
    if not config.quiet:
        size = f"{pixel:.4g} nm/px" if pixel else "uncalibrated"
        print(f"{task.job.source} -> {task.job.output}  {z}x{s * h}x{s * w} stack ({size}), {label} (batch)")

"""The offline room's file glue: read frames, register and fit references, enhance and evaluate files -- the plain
functions ``refscope fit`` / ``enhance`` / ``evaluate`` / ``batch`` / ``train`` and the Python API run.

Reads through :mod:`refscope.daemon.images` (its readers), serves through
:class:`~refscope.daemon.serve.engine.ServingEngine` and writes outputs atomically
(:func:`~refscope.daemon.images.write_tiff`); nothing here parses arguments, and nothing here modifies an input
file. Command-line parsing lives in :mod:`refscope.daemon.cli`, which calls these.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from refscope.models.errors import RefscopeModelError
from refscope.models.evaluation import EvaluationReport, evaluate_pair
from refscope.models.image_ops import as_gray_float
from refscope.models.pipeline import FitConfig, FittedModel, fit_library, register_reference, training_grids
from refscope.models.promotion import split_for_validation
from refscope.models.registration import PairGeometry
from refscope.models.safe_blend import choose_safe_baseline

from .batch_files import write_stack
from ..config import ModelConfig, ServeConfig
from ..errors import InputFileError, RefscopeError, one_line
from ..frames import Frame
from ..images.readers import IMAGE_SUFFIXES, companion_reason, read_frames
from ..state.model_domain import ModelDomain, check_domain
from ..learn.pairing import PairingHooks
from .progress import Steps, progress
from ..state.provenance import model_id, provenance
from ..serve.engine import ServingEngine
from ..images import LoadedImage, acquisition_metadata, output_pixels, read_image, write_tiff

__all__ = ["load_frame", "load_frames", "as_float_image", "register_pair", "check_stage_positions", "register_files",
           "fit_files", "expand_inputs", "check_output_file", "check_output_folder", "plan_outputs", "enhance_files",
           "evaluate_files"]

log = logging.getLogger("refscope.cli")


def load_frame(path: str | Path, *, pixel_size_nm: float | None = None, flag: str | None = None,
               detector: str | None = None) -> LoadedImage:
    """Read a grayscale frame as float64; with ``flag`` (e.g. ``--lr-pixel-size``) its pixel size is required.
    ``detector``: which detector of a multi-detector file (default HAADF). A stack or series file is refused
    (fit and evaluate need one frame; ``enhance`` reads every frame, :func:`load_frames`)."""
    image = read_image(path, pixel_size_nm=pixel_size_nm, detector=detector)
    return as_float_image(image, f"{flag} NM" if flag is not None else None)


def load_frames(path: str | Path, *, pixel_size_nm: float | None = None, detector: str | None = None
                ) -> list[LoadedImage]:
    """Every frame of ``path`` (one for a single image; a stack or series in file order) as float64."""
    return [as_float_image(image) for image in read_frames(path, pixel_size_nm=pixel_size_nm, detector=detector)]


def as_float_image(image: LoadedImage, pixel_size_hint: str | None = None) -> LoadedImage:
    """``image`` with float64 pixels (its stored pixel type kept as ``stored_dtype``); an error naming the file
    for a constant or too small image, and, with ``pixel_size_hint`` (how the caller gives a pixel size, e.g.
    ``--lr-pixel-size NM``), for an uncalibrated one."""
    where = str(image.path) if image.metadata.frame is None else f"{image.path} (frame {image.metadata.frame})"
    data = as_gray_float(image.data, name=where)  # constant / too small -> "<file>: is constant ..."
    if pixel_size_hint is not None and image.pixel_size_nm is None:
        raise InputFileError(f"{image.path}: pixel size unknown (no calibration in the file); pass {pixel_size_hint}")
    log.info("%s: %dx%d %s, pixel %s nm (%s)", where, *data.shape, image.data.dtype, image.pixel_size_nm,
             image.metadata.pixel_size_source)
    return replace(image, data=data, stored_dtype=image.pixel_type)


def _about(path: Path, exc: Exception) -> InputFileError:
    """Re-raise a models error as an input error naming ``path``."""
    return InputFileError(f"{path}: {exc}")


def register_pair(lr: LoadedImage, hr: LoadedImage, config: FitConfig) -> tuple[float, PairGeometry]:
    """(factor, geometry) of ``hr`` inside ``lr``; registration problems are reported against the HR file."""
    factor = lr.pixel_size_nm / hr.pixel_size_nm  # type: ignore[operator]
    try:
        return factor, register_reference(lr.data, hr.data, factor=factor, config=config)
    except RefscopeModelError as exc:
        raise _about(hr.path, exc) from exc


def check_stage_positions(lr: LoadedImage, hr: LoadedImage, *, force: bool = False) -> None:
    """Refuse (InputFileError naming both files and positions) an HR reference whose field the stage positions
    in the metadata put outside the LR field -- the live daemon's rule (``PairingHooks.contains``); nothing is
    known without both positions and fields. ``force``: a warning instead."""
    def frame(image: LoadedImage) -> Frame:
        return Frame(data=image.data, pixel_size_nm=image.pixel_size_nm, role="auto", source=str(image.path), seq=0,
                     t=0.0, stage_xy_m=image.metadata.stage_xy_m, field_of_view_nm=image.metadata.field_of_view_nm)

    if PairingHooks().contains(frame(lr), frame(hr)) is not False:
        return
    (lx, ly), (hx, hy) = lr.metadata.stage_xy_m, hr.metadata.stage_xy_m  # type: ignore[misc]
    fov_y, fov_x = lr.metadata.field_of_view_nm  # type: ignore[misc]
    message = (f"{hr.path}: its stage position ({hx * 1e6:.1f}, {hy * 1e6:.1f}) µm lies outside the field of "
               f"{lr.path} ({fov_x / 1e3:.1f} x {fov_y / 1e3:.1f} µm around ({lx * 1e6:.1f}, {ly * 1e6:.1f}) µm): "
               "not a reference of that frame")
    if not force:
        raise InputFileError(message + " (--force learns from it anyway)")
    log.warning("%s; learned from anyway (--force)", message)


def register_files(lr: LoadedImage, references: list[LoadedImage], config: FitConfig
                   ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[PairGeometry]]:
    """Register every reference in ``lr``: the (LR overlap region, HR grid) training pairs and the geometries."""
    regions, geometries = [], []
    for hr in references:
        _, geometry = register_pair(lr, hr, config)
        try:
            box, hr_grid = training_grids(lr.data, hr.data, geometry, scale=config.scale)
        except RefscopeModelError as exc:
            raise _about(hr.path, exc) from exc
        (y0, y1), (x0, x1) = box
        regions.append((lr.data[y0:y1, x0:x1], hr_grid))
        geometries.append(geometry)
    return regions, geometries


def fit_files(lr: LoadedImage, references: list[LoadedImage], config: FitConfig,
              registered: tuple[list, list] | None = None) -> FittedModel:
    """Register every reference in ``lr`` and fit one library on all overlaps (as ``pipeline.fit``), with its
    safe baseline chosen on the right quarter of every overlap (:func:`refscope.models.safe_blend.
    choose_safe_baseline`, as the daemon's learner chooses it; the blur's choice does not depend on the library,
    so learning from those columns too does not leak into it)."""
    regions, geometries = registered or register_files(lr, references, config)
    try:
        model = fit_library(regions, config=config, geometries=geometries)
    except RefscopeModelError as exc:
        raise _about(lr.path, exc) from exc
    try:
        held_out = [sub for region, grid in regions
                    for sub in split_for_validation(region, grid, scale=config.scale).held_out]
        model.safe = choose_safe_baseline(model, [region for region, _ in regions], held_out)
    except (RefscopeModelError, ValueError) as exc:  # the model stands; its outputs are then not blended
        log.warning("%s: no safe baseline chosen (%s); outputs will not be pulled toward one", lr.path, exc)
    return model


def expand_inputs(inputs: list[str], scale: int) -> list[Path]:
    """Input files, with folders replaced by their files (sorted; hidden files and ``*_x{S}`` outputs left out).

    Every other file of a folder is an input -- one refscope cannot read fails with its reason, never silently --
    except a companion read with its image (a TIA ``.emi``, a sidecar JSON), which is named on stderr and left out.
    """
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if not path.is_dir():
            files.append(path)
            continue
        found = []
        for p in sorted(path.iterdir()):
            if not p.is_file() or p.name.startswith(".") or (p.stem.endswith(f"_x{scale}") and
                                                             p.suffix.lower() in (".tif", ".tiff")):
                continue
            reason = companion_reason(p)
            if reason is not None:
                print(f"note: {p}: {reason}", file=sys.stderr)
                continue
            found.append(p)
        if not found:
            raise InputFileError(f"{path}: folder holds no frames to enhance (looked for {'/'.join(IMAGE_SUFFIXES)})")
        files.extend(found)
    return files


def check_output_file(path: str | Path, what: str) -> Path:
    """Refuse, before any work, an output file that cannot be written: its folder missing or not writable, or the
    path an existing folder (InputFileError naming the path and ``what`` it is for, e.g. ``--plot``)."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise InputFileError(f"{target}: {what} is an existing folder, not a file")
    if not folder.is_dir():
        raise InputFileError(f"{target}: {what}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputFileError(f"{target}: {what}: folder {folder} is not writable")
    return target


def check_output_folder(path: str | Path, what: str) -> Path:
    """Refuse, before any work, an output folder that cannot be made or written (an existing file there, its
    parent missing or not writable); a missing folder whose parent exists is created when the work writes."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputFileError(f"{folder}: {what} exists and is not a folder")
    probe = folder if folder.is_dir() else folder.parent if str(folder.parent) else Path(".")
    if not probe.is_dir():
        raise InputFileError(f"{folder}: {what}: folder {probe} does not exist")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputFileError(f"{folder}: {what}: folder {probe} is not writable")
    return folder


def plan_outputs(inputs: list[Path], out: Path, scale: int, single: bool) -> list[Path]:
    """Output path of each input; refuses duplicates and any output that is also an input."""
    if single:
        outputs = [out]
    else:
        if out.suffix.lower() in (".tif", ".tiff"):
            raise InputFileError(f"{out}: several frames (or a folder) need an output folder, not a .tif file")
        if out.exists() and not out.is_dir():
            raise InputFileError(f"{out}: exists and is not a folder")
        outputs = [out / f"{p.stem}_x{scale}.tif" for p in inputs]
    sources = {p.resolve(): p for p in inputs}
    seen: dict[Path, Path] = {}
    for src, dst in zip(inputs, outputs):
        key = dst.resolve()
        if key in sources:
            raise InputFileError(f"{dst}: is also an input file; refusing to overwrite an input")
        if key in seen:
            raise InputFileError(f"{dst}: would be written from both {seen[key]} and {src}")
        seen[key] = src
    return outputs


def enhance_files(model: FittedModel, inputs: list[str], out: str, *, method: str = "paired",
                  sigma_n: float | None = None, command: str = "enhance", engine: str = "onnx", runner=None,
                  scale: int | None = None, label: str | None = None, state_dir: str | Path | None = None,
                  domain: ModelDomain | None = None, strict: bool = False, quiet: bool = False,
                  dtype: str = "input", detector: str | None = None) -> int:
    """Enhance every input frame into ``out``; prints one line per frame, returns 0 or 2 (some frame failed).
    ``state_dir``: the model's state folder, whose ``onnx-cache/`` keeps the exported model for the next call.
    ``domain``: the model's (:mod:`.model_domain`): a frame outside it gets a warning naming what differs, or
    with ``strict`` is refused (counted as failed). ``detector``: which detector of a multi-detector file (default
    HAADF). A stack or series file (a 3-D DM image, a multi-frame SER or Velox EMD, an MRC volume, a multi-page
    TIFF) is enhanced frame by frame into one 3-D float32 ImageJ stack, as ``refscope batch`` writes one.

    Frames go through the daemon's :class:`~refscope.daemon.serve.engine.ServingEngine`, so a batch costs what live
    serving costs: the model is exported and loaded once (ONNX Runtime for ``paired`` with ``engine="onnx"``;
    the NumPy reference implementation otherwise). ``runner`` (``lr -> sr``, e.g. the trained network through
    ONNX Runtime, :mod:`.net`) replaces the engine; give ``scale`` with it and ``model`` may be None.
    """
    if runner is None:
        scale = model.scale
        server = ServingEngine(ModelConfig(scale=scale, method=method, sigma_n=sigma_n), ServeConfig(),
                               use_onnx=engine == "onnx", onnx_cache_dir=state_dir)
        server.set_model(model, version=1)
    files = expand_inputs(inputs, scale)
    out_path = Path(out)
    single = len(files) == 1 and not Path(inputs[0]).is_dir() and out_path.suffix.lower() in (".tif", ".tiff")
    outputs = plan_outputs(files, out_path, scale, single)
    if single:
        check_output_file(out_path, "-o")  # a missing folder is a typo more often than a wish: not created
    else:
        check_output_folder(out_path, "-o")
    (out_path.parent if single else out_path).mkdir(parents=True, exist_ok=True)
    with progress(f"{command}: {len(files)} frame(s)", len(files), quiet=quiet or len(files) < 2) as steps:
        failed = _enhance_each(files, outputs, steps, server=server if runner is None else None, runner=runner,
                               domain=domain, strict=strict, command=command, method=method, scale=scale, label=label,
                               dtype=dtype, detector=detector, state_dir=state_dir)
    return 2 if failed else 0


def _enhance_each(files: list[Path], outputs: list[Path], steps: Steps, *, server: Any, runner: Any,
                  domain: ModelDomain | None, strict: bool, command: str, method: str, scale: int,
                  label: str | None, dtype: str = "input", detector: str | None = None,
                  state_dir: str | Path | None = None) -> int:
    """The per-file loop of :func:`enhance_files` (a stack file: every frame, one stacked output); returns how many
    files failed."""
    failed = 0
    for src, dst in zip(files, outputs):
        steps.say(f"{command}: {Path(src).name}")
        try:
            frames = load_frames(src, detector=detector)
            results, seconds = [], 0.0
            for frame in frames:
                check_domain(src, frame, domain, strict=strict)
                if runner is not None:
                    start = time.perf_counter()
                    result, backend = runner(frame.data), "onnx"
                    seconds += time.perf_counter() - start
                else:
                    served = server.enhance(frame.data)
                    result, backend = served.image, served.backend
                    seconds += served.seconds
                results.append(result)
        except (RefscopeError, ValueError) as exc:
            if len(files) == 1:
                raise
            print(f"refscope {command}: error: {one_line(exc)}", file=sys.stderr)
            failed += 1
            steps.advance()
            continue
        frame = frames[0]
        pixel = frame.pixel_size_nm / scale if frame.pixel_size_nm else None
        metadata = {"method": method, "scale": scale, "source": str(src),
                    **provenance(src, model=model_id(state_dir, method)), **acquisition_metadata(frame)}
        height, width = results[0].shape
        if len(results) == 1:
            write_tiff(dst, output_pixels(results[0], frame.pixel_type if dtype == "input" else "float32"),
                       pixel_size_nm=pixel, metadata=metadata)
            shape = f"{height}x{width}"
        else:  # a stack or series: one 3-D float32 ImageJ stack, frame z = the file's frame z (as refscope batch)
            metadata.pop("source_frame", None)
            write_stack(dst, results, (len(results), height, width), pixel_size_nm=pixel, metadata=metadata)
            shape = f"{len(results)} frames of {height}x{width}"
        size = f"{pixel:.4g} nm/px" if pixel else "uncalibrated"
        print(f"{src} -> {dst}  {shape} ({size}), {label or method} ({backend}), {seconds:.2f} s")
        steps.advance()
    return failed


def evaluate_files(lr: LoadedImage, hr: LoadedImage, *, scale: int | None, methods: tuple[str, ...],
                   in_sample: bool) -> EvaluationReport:
    """Run the 3x4 subimage protocol on a pair; ``scale`` defaults to min(floor(factor), 4)."""
    factor = lr.pixel_size_nm / hr.pixel_size_nm  # type: ignore[operator]
    if scale is None:
        scale = max(2, min(math.floor(factor * 1.001), 4))
    config = FitConfig(scale=scale)
    _, geometry = register_pair(lr, hr, config)
    try:
        return evaluate_pair(lr.data, hr.data, factor=factor, scale=scale, methods=methods, in_sample=in_sample,
                             config=config, geometry=geometry)
    except RefscopeModelError as exc:
        raise _about(hr.path, exc) from exc

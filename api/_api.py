"""The Python API behind :mod:`refscope`: thin wrappers around the commands' own code paths.

``fit`` runs what ``refscope fit`` runs (stage-position and registration checks on every reference, ``force`` to
override), ``evaluate`` what ``refscope evaluate`` runs, ``Model.save`` writes what ``refscope enhance`` serves,
and ``Model.enhance`` reconstructs with :func:`refscope.models.enhance` (the NumPy reference; the command serves
the same model through ONNX Runtime). Images may be given as file paths, as :class:`LoadedImage` (from
:func:`read_image`, which carries the pixel size and the vendor metadata) or as 2-D arrays (then the pixel sizes
are arguments).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

import numpy as np

from refscope.daemon.state.model_domain import ModelDomain
from refscope.daemon.images.common import ImageMetadata, LoadedImage
from refscope.daemon.images import read_image as _read_image
from refscope.models.evaluation import EvaluationReport
from refscope.models.library import LibraryConfig
from refscope.models.pipeline import METHODS, FitConfig, FittedModel, default_patch_size
from refscope.models.pipeline import enhance as _enhance

__all__ = ["read_image", "fit", "enhance", "evaluate", "plot_evaluation", "load_model", "Model", "ImageLike"]

ImageLike = Union[str, "os.PathLike[str]", LoadedImage, np.ndarray]
"""A file path, an image from :func:`read_image`, or a 2-D array."""


def read_image(path: str | os.PathLike[str], *, pixel_size_nm: float | None = None,
               detector: str | None = None) -> LoadedImage:
    """Read one grayscale frame from any format refscope reads (FEI/Thermo, Zeiss, OME, ImageJ TIFF, PNG, DM3/DM4,
    EMD, SER, MRC: see the README's "Input formats").

    Returns a :class:`LoadedImage`: ``.data`` (H, W) in the file's pixel type (data bar cropped),
    ``.pixel_size_nm`` (nm, None when the file is uncalibrated; ``pixel_size_nm`` overrides), ``.metadata``
    (vendor, HV, working distance, dwell, detector, stage position, time). ``detector`` picks one of a
    multi-detector file. Raises an error naming the file for anything it cannot read.
    """
    return _read_image(path, pixel_size_nm=pixel_size_nm, detector=detector)


def _as_image(image: ImageLike, pixel_size_nm: float | None, what: str, pixel_size_hint: str | None = None
              ) -> LoadedImage:
    """A float64 :class:`LoadedImage` of ``image`` (its stored pixel type kept as ``stored_dtype``); with
    ``pixel_size_hint`` an uncalibrated image is refused, the message saying how to give its pixel size."""
    from refscope.daemon.offline.files import as_float_image

    if isinstance(image, (str, os.PathLike)):
        image = _read_image(image, pixel_size_nm=pixel_size_nm)
    elif isinstance(image, np.ndarray):
        meta = ImageMetadata(vendor="plain", pixel_size_nm=pixel_size_nm,
                             pixel_size_source="argument" if pixel_size_nm else None)
        image = LoadedImage(data=image, pixel_size_nm=pixel_size_nm, path=Path(f"<{what} array>"), metadata=meta)
    elif isinstance(image, LoadedImage):
        if pixel_size_nm is not None:
            image = replace(image, pixel_size_nm=float(pixel_size_nm))
    else:
        raise TypeError(f"{what}: expected a file path, a refscope.read_image() result or a 2-D array, "
                        f"got {type(image).__name__}")
    return as_float_image(image, pixel_size_hint)


@dataclass(frozen=True)
class Model:
    """A fitted paired model with the domain it was fitted in (pixel size, pixel type, detector).

    Attributes:
        fitted: the :class:`refscope.models.FittedModel` (library, intensity map, noise, geometries).
        domain: where its LR frame came from (:class:`refscope.daemon.state.model_domain.ModelDomain`), or None.
        sources: the files it was fitted from (LR first), when known.
    """

    fitted: FittedModel
    domain: ModelDomain | None = None
    sources: tuple[str, ...] = ()

    @property
    def scale(self) -> int:
        """The upscaling factor S: ``enhance`` returns (S·H, S·W) for an (H, W) frame."""
        return int(self.fitted.scale)

    def enhance(self, image: ImageLike, *, method: str = "paired", sigma_n: float | None = None,
                strict: bool = False) -> np.ndarray:
        """Super-resolve one frame: (S·H, S·W) float64 in the frame's intensity units.

        ``method``: one of :data:`refscope.models.METHODS` (``paired`` by default, ``bicubic`` for the baseline).
        A frame outside the model's domain (pixel size off by more than 20 %, another bit depth or detector:
        known for a path or a :func:`read_image` result) gets a ``UserWarning`` naming what differs, or with
        ``strict`` a ``ValueError``.
        """
        if method not in METHODS:
            raise ValueError(f"method: choose one of {', '.join(METHODS)}, got {method!r}")
        frame = _as_image(image, None, "frame")
        if self.domain is not None and not isinstance(image, np.ndarray):
            differs = self.domain.differences(ModelDomain.of(frame))
            if differs:
                message = f"{frame.path}: outside the model's domain: {'; '.join(differs)}"
                if strict:
                    raise ValueError(message + " (strict)")
                warnings.warn(message, UserWarning, stacklevel=2)
        return _enhance(frame.data, self.fitted, method=method, sigma_n=sigma_n)

    def save(self, state_dir: str | os.PathLike[str]) -> Path:
        """Write the model into ``state_dir`` (created if missing; atomically), where ``refscope enhance
        STATE_DIR ...``, ``refscope batch`` and the daemon find it. Returns the folder."""
        from refscope.daemon.state.model_store import save_model

        save_model(state_dir, self.fitted, sources=list(self.sources), domain=self.domain)
        return Path(state_dir)

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str]) -> Model:
        """The model saved in ``state_dir`` (by :meth:`save` or ``refscope fit -o``); checksum verified."""
        from refscope.daemon.state.model_store import load_domain
        from refscope.daemon.state.model_store import load_model as _load

        return cls(_load(state_dir), load_domain(state_dir))


def load_model(state_dir: str | os.PathLike[str]) -> Model:
    """The model saved in ``state_dir`` (:meth:`Model.load`)."""
    return Model.load(state_dir)


def fit(lr: ImageLike, references: Sequence[ImageLike] | ImageLike, *, scale: int = 2,
        lr_pixel_size_nm: float | None = None, hr_pixel_size_nm: float | None = None,
        library_size: int | None = None, patch_size: int | None = None, seed: int | None = None,
        force: bool = False) -> Model:
    """Learn a paired model from one LR frame and one or more HR references of parts of it (``refscope fit``).

    Every reference is checked first: its stage position (when both files carry one) must lie inside the LR
    field, and its registration must score at least 0.8 of what a true match reaches at the LR frame's noise;
    otherwise an error names the file (``force=True`` learns from it anyway, with a warning). The factor of
    each reference is the ratio of the pixel sizes (from the files, or ``lr_pixel_size_nm`` /
    ``hr_pixel_size_nm`` -- required for arrays). ``scale``: the model's S (2, 3, 4...); a reference must be
    at least S times finer. Returns a :class:`Model`.
    """
    from refscope.daemon.offline.files import check_stage_positions, fit_files, register_files

    lr_image = _as_image(lr, lr_pixel_size_nm, "LR", "lr_pixel_size_nm=NM")
    refs = [references] if isinstance(references, (str, os.PathLike, np.ndarray, LoadedImage)) else list(references)
    if not refs:
        raise ValueError("references: give at least one HR reference of a part of the LR frame")
    hr_images = [_as_image(ref, hr_pixel_size_nm, f"HR {i + 1}", "hr_pixel_size_nm=NM") for i, ref in enumerate(refs)]
    options: dict[str, Any] = {"patch_size": patch_size or default_patch_size(scale)}
    if library_size is not None:
        options["size"] = library_size
    if seed is not None:
        options["seed"] = seed
    config = FitConfig(scale=scale, library=LibraryConfig(**options), min_relative_ncc=0.0 if force else 0.8)
    for hr in hr_images:
        check_stage_positions(lr_image, hr, force=force)
    registered = register_files(lr_image, hr_images, config)
    fitted = fit_files(lr_image, hr_images, config, registered)
    sources = tuple(str(image.path) for image in [lr_image, *hr_images])
    return Model(fitted, ModelDomain.of(lr_image), sources)


def enhance(image: ImageLike, model: Model | str | os.PathLike[str], *, method: str = "paired",
            sigma_n: float | None = None, strict: bool = False) -> np.ndarray:
    """Super-resolve ``image`` with ``model`` (a :class:`Model` or a state folder written by ``refscope fit``):
    (S·H, S·W) float64 in the frame's intensity units. See :meth:`Model.enhance`."""
    if not isinstance(model, Model):
        model = Model.load(model)
    return model.enhance(image, method=method, sigma_n=sigma_n, strict=strict)


def evaluate(lr: ImageLike, hr: ImageLike, *, scale: int | None = None,
             methods: Sequence[str] = ("paired", "paired-faithful", "original"), in_sample: bool = True,
             lr_pixel_size_nm: float | None = None, hr_pixel_size_nm: float | None = None) -> EvaluationReport:
    """Score the methods on a real LR/HR pair with the 3x4 subimage protocol (``refscope evaluate``).

    Returns a :class:`refscope.models.EvaluationReport`: ``.results`` per subimage and method (scores and
    differences to bicubic), ``.summary()`` one row per method and in/out-of-sample, ``.panel`` the images of one
    out-of-sample subimage. ``scale`` defaults to min(floor(factor), 4).
    """
    from refscope.daemon.offline.files import evaluate_files

    lr_image = _as_image(lr, lr_pixel_size_nm, "LR", "lr_pixel_size_nm=NM")
    hr_image = _as_image(hr, hr_pixel_size_nm, "HR", "hr_pixel_size_nm=NM")
    return evaluate_files(lr_image, hr_image, scale=scale, methods=tuple(methods), in_sample=in_sample)


def plot_evaluation(report: EvaluationReport, path: str | os.PathLike[str] | None = None, *,
                    title: dict[str, Any] | None = None) -> Any:
    """The figure of ``refscope evaluate --plot`` for ``report``: ΔPSNR/ΔSSIM per method and subimage with error
    bars, and the image panel. Written atomically as PNG when ``path`` is given; returns the matplotlib Figure
    (shown inline by Jupyter)."""
    from refscope.daemon.offline.plot import plot_evaluation as _plot
    from refscope.daemon.offline.plot import write_evaluation_plot

    if path is None:
        return _plot(report, title)
    return write_evaluation_plot(path, report, title)

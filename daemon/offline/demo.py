"""``refscope demo --offline``: the whole workflow offline, on a synthetic SEM pair (no microscope, no data needed).

(``refscope demo`` without ``--offline`` runs the live demo, :mod:`refscope.daemon.offline.live_demo`.)

A synthetic specimen is scanned twice (:func:`refscope.models.synthetic.make_pair`): an LR frame
(256 x 384 px at 10 nm, or 96 x 128 with ``small``) and an HR reference at 5 nm (factor 2) covering a random
quarter of the LR field. Both are written as calibrated TIFFs, then the same code as ``refscope fit``,
``refscope enhance`` and ``refscope evaluate`` runs on them in-process (their ``main``), printing the
registration, the per-frame time and the evaluation table (out-of-sample subimages only, to stay quick: about
15 s on 2 cores, 3 s with ``small``). The files are kept and their folder printed.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from refscope.models.synthetic import make_pair

from ..images import write_tiff

__all__ = ["DEMO_LR_SHAPE", "DEMO_SMALL_LR_SHAPE", "write_demo_pair", "run_demo"]

DEMO_LR_SHAPE = (256, 384)
DEMO_SMALL_LR_SHAPE = (96, 128)
_LR_PIXEL_NM = 10.0
_FACTOR = 2.0


def write_demo_pair(folder: str | os.PathLike[str], *, seed: int = 0, small: bool = False) -> tuple[Path, Path, dict]:
    """Write ``lr.tif`` and ``hr.tif`` (float32, calibrated in nm) into ``folder``; returns their paths and truth.

    The truth dict gives the HR field's LR offset (y, x) in LR px, its rotation (deg) and the pixel sizes (nm).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pair = make_pair(rng=np.random.default_rng(seed), lr_shape=DEMO_SMALL_LR_SHAPE if small else DEMO_LR_SHAPE,
                     factor=_FACTOR, hr_fraction=0.25, lr_pixel_size_nm=_LR_PIXEL_NM)
    lr_path, hr_path = folder / "lr.tif", folder / "hr.tif"
    provenance = {"synthetic": True, "seed": int(seed)}
    write_tiff(lr_path, pair.lr.astype(np.float32), pixel_size_nm=pair.lr_pixel_size_nm, metadata=provenance)
    write_tiff(hr_path, pair.hr.astype(np.float32), pixel_size_nm=pair.hr_pixel_size_nm, metadata=provenance)
    truth = {"offset_yx": pair.offset_yx, "rotation_deg": pair.rotation_deg,
             "lr_pixel_size_nm": pair.lr_pixel_size_nm, "hr_pixel_size_nm": pair.hr_pixel_size_nm}
    return lr_path, hr_path, truth


def run_demo(main: Callable[[list[str]], int], *, seed: int = 0, json_path: str | None = None,
             small: bool = False, workdir: str | os.PathLike[str] | None = None) -> int:
    """Make the pair, then fit, enhance and evaluate it with ``main`` (the CLI's entry point, handed in by the
    CLI: the demo shows exactly the commands a user types); returns the first non-zero exit code."""

    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="refscope-demo-"))
    lr, hr, truth = write_demo_pair(folder, seed=seed, small=small)
    print(f"synthetic pair (seed {seed}): {lr} ({truth['lr_pixel_size_nm']:g} nm/px), {hr} "
          f"({truth['hr_pixel_size_nm']:g} nm/px); true HR offset (y, x) = ({truth['offset_yx'][0]:.2f}, "
          f"{truth['offset_yx'][1]:.2f}) LR px")
    state, enhanced = folder / "model", folder / "lr_x2.tif"
    evaluation = Path(json_path) if json_path else folder / "evaluation.json"
    steps = (
        ["fit", str(lr), str(hr), "-o", str(state)],
        ["enhance", str(state), str(lr), "-o", str(enhanced)],
        ["evaluate", str(lr), str(hr), "--no-in-sample", "--json", str(evaluation)],
    )
    for argv in steps:
        print(f"\n$ refscope {' '.join(argv)}")
        code = main(argv)
        if code:
            return code
    print(f"\nfiles in {folder}: lr.tif, hr.tif (inputs), model/ (fitted library), lr_x2.tif (enhanced), "
          f"{evaluation.name if evaluation.parent == folder else evaluation} (scores)")
    return 0

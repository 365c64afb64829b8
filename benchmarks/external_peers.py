"""Peers that run outside refscope's environment: their own virtual environments and a batch runner (benchmark only).

Some peers cannot be dependencies of the MIT package: BM3D (the ``bm3d`` package's licence) and ``tk-r-em``
(``tk_r_em``, GPL-3, pretrained EM restoration networks in TensorFlow; Lobato, Friedrich & Van Aert,
arXiv:2303.17025). Each gets a virtual environment under ``benchmarks/peers/`` (git-ignored), created here by the
benchmark on first use (:func:`ensure_env`), and is called in *one* subprocess per batch (:func:`run_batch`): the
arrays go through ``.npy`` files in a temporary folder, each written to a temporary name and renamed.

``tk-r-em`` as a peer (:func:`tkrem_peer`): its network restores the LR image on the LR grid, then Keys bicubic
brings it to the S-times grid; the benchmark's per-image linear intensity fit and scores follow as for every method.
The setting (network ``sfr_lrsem`` or ``sfr_hrsem``; on the LR subimage alone, on the LR subimage inside its
surrounding LR frame, or on the bicubic output) is chosen on the validation subimages only.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / "peers"


@dataclass(frozen=True)
class PeerEnv:
    """A benchmark-only virtual environment: where, what to install (pip argument lists, in order), what to import
    to check it works, and the peer's name for messages."""

    label: str
    path: Path
    installs: tuple[tuple[str, ...], ...]
    probe: str

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


BM3D_ENV = PeerEnv("BM3D", PEERS_DIR / ".venv", (("bm3d", "numpy", "scipy"),), "bm3d")
TKREM_ENV = PeerEnv("tk-r-em", PEERS_DIR / "tkrem" / ".venv",
                    (("tensorflow-cpu==2.12.*", "h5py"), ("--no-deps", "tk_r_em==1.0.4")), "tk_r_em")
"""TensorFlow 2.12 CPU (Python 3.11 wheels) and ``tk_r_em`` without its declared dependencies (matplotlib is only
used by its examples; its networks, all six, ship in the package: ``tk_r_em/models/<name>/saved_model.pb``)."""
TKREM_MODELS = ("sfr_lrsem", "sfr_hrsem")
TKREM_PLACES = ("lr", "lr+ctx", "up")
"""``lr``: the LR subimage alone; ``lr+ctx``: the LR subimage inside its surrounding LR (``CONTEXT_PX`` on each
side, as the network would see a whole frame); ``up``: the bicubic output, on the S-times grid."""
CONTEXT_PX = 48


def _works(env: PeerEnv) -> bool:
    if not env.python.exists():
        return False
    probe = subprocess.run([str(env.python), "-c", f"import {env.probe}"], capture_output=True)
    return probe.returncode == 0


def ensure_env(env: PeerEnv) -> bool:
    """True when ``env`` can import its peer, creating it first if needed; False (with the reason on stderr, the peer
    left out of the run) when it cannot be created, e.g. without network access."""
    if _works(env):
        return True
    try:
        env.path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(env.path)], check=True, capture_output=True)
        for args in env.installs:
            subprocess.run([str(env.python), "-m", "pip", "install", "-q", *args], check=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"{env.label} environment {env.path} could not be created ({exc}); {env.label} is left out",
              file=sys.stderr)
        return False
    if not _works(env):
        print(f"{env.label} environment {env.path} cannot import {env.probe}; {env.label} is left out", file=sys.stderr)
        return False
    return True


def save_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary name beside ``path``, then rename: a file that exists is complete."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def run_batch(command: Sequence[str], images: Sequence[np.ndarray], variants: Sequence[str], *,
              env: dict[str, str] | None = None, timeout_s: float | None = None) -> list[dict[str, np.ndarray]]:
    """Every image through every variant in one subprocess: ``[*command, IN_DIR, OUT_DIR, *variants]``.

    The images are written as ``IN_DIR/i<k>.npy``; the command must write ``OUT_DIR/i<k>__<variant>.npy`` for each.
    Returns, per image in order, ``{variant: array}``. Raises ``subprocess.CalledProcessError`` when the command
    fails and ``RuntimeError`` naming the missing outputs when it exits 0 without writing them all.
    """
    with tempfile.TemporaryDirectory(prefix="refscope-peer-") as tmp:
        src, dst = Path(tmp) / "in", Path(tmp) / "out"
        src.mkdir()
        dst.mkdir()
        width = len(str(max(len(images) - 1, 0)))
        keys = [f"i{k:0{width}d}" for k in range(len(images))]
        for key, image in zip(keys, images):
            save_atomic(src / f"{key}.npy", np.asarray(image))
        subprocess.run([*map(str, command), str(src), str(dst), *variants], check=True, timeout=timeout_s,
                       env=None if env is None else os.environ | env)
        missing = [f"{k}__{v}.npy" for k in keys for v in variants if not (dst / f"{k}__{v}.npy").is_file()]
        if missing:
            raise RuntimeError(f"{command[0]} exited 0 without writing {len(missing)} outputs: {missing[:4]}")
        return [{v: np.load(dst / f"{k}__{v}.npy") for v in variants} for k in keys]


def tkrem_batch(images: Sequence[np.ndarray], models: Sequence[str] = TKREM_MODELS,
                threads: int = 1) -> list[dict[str, np.ndarray]]:
    """tk-r-em ``models`` on every image, in the tk-r-em environment (one process, ``threads`` TensorFlow threads)."""
    return run_batch([TKREM_ENV.python, HERE / "tkrem_worker.py"], images, models,
                     env={"REFSCOPE_PEER_THREADS": str(threads)})


def locate(frame: np.ndarray, view: np.ndarray) -> tuple[int, int] | None:
    """(row, column) of ``view`` inside ``frame`` when it is a 2-D slice of it (checked pixel for pixel), else None."""
    if view.ndim != 2 or frame.ndim != 2 or view.strides != frame.strides or not np.may_share_memory(frame, view):
        return None
    offset = view.__array_interface__["data"][0] - frame.__array_interface__["data"][0]
    row, rest = divmod(offset, frame.strides[0])
    col, odd = divmod(rest, frame.strides[1])
    h, w = view.shape
    if offset < 0 or odd or row + h > frame.shape[0] or col + w > frame.shape[1]:
        return None
    return (row, col) if np.array_equal(frame[row:row + h, col:col + w], view) else None


def tkrem_peer(lr_frame: np.ndarray, validation, scored, scale: int, *,
               runner: Callable[[list[np.ndarray]], list[dict[str, np.ndarray]]] = tkrem_batch) -> dict:
    """The tk-r-em peer of one pair: its setting chosen on ``validation``, its outputs on ``scored``.

    ``validation`` and ``scored`` are lists of (LR subimage (h, w), HR reference (S·h, S·w)); the LR subimages are
    slices of ``lr_frame`` when the ``lr+ctx`` place is to be tried (:func:`locate`). ``runner`` maps a list of
    images to ``{model: output}`` per image (:func:`tkrem_batch`; a fake in the tests). Returns ``{"setting":
    "<model> on <place>", "scored": [S-grid float64 arrays], "validation": {setting: mean ΔPSNR dB}, "candidates":
    {setting: [S-grid arrays on scored]}}``.
    """
    from refscope.models.image_ops import upsample_bicubic
    from refscope.models.metrics import fit_intensity, psnr

    subs = [np.asarray(lr) for lr, _ in validation] + [np.asarray(lr) for lr, _ in scored]
    nv, n = len(validation), len(subs)
    images = list(subs) + [upsample_bicubic(np.asarray(lr, np.float64), scale) for lr in subs]
    where = [locate(lr_frame, lr) for lr in subs]
    box = None
    if all(w is not None for w in where):
        y0 = max(0, min(r for r, _ in where) - CONTEXT_PX)
        x0 = max(0, min(c for _, c in where) - CONTEXT_PX)
        y1 = min(lr_frame.shape[0], max(r + s.shape[0] for (r, _), s in zip(where, subs)) + CONTEXT_PX)
        x1 = min(lr_frame.shape[1], max(c + s.shape[1] for (_, c), s in zip(where, subs)) + CONTEXT_PX)
        box = (y0, x0)
        images.append(lr_frame[y0:y1, x0:x1])
    out = runner(images)
    models = list(out[0])
    outputs: dict[str, list[np.ndarray]] = {}
    for m in models:
        outputs[f"{m} on lr"] = [upsample_bicubic(out[i][m].astype(np.float64), scale) for i in range(n)]
        outputs[f"{m} on up"] = [out[n + i][m].astype(np.float64) for i in range(n)]
        if box is not None:
            ctx = out[2 * n][m].astype(np.float64)
            outputs[f"{m} on lr+ctx"] = [
                upsample_bicubic(ctx[r - box[0]:r - box[0] + s.shape[0], c - box[1]:c - box[1] + s.shape[1]], scale)
                for (r, c), s in zip(where, subs)]
    base = [psnr(ref, fit_intensity(images[n + i], ref))  # images[n:2n]: the bicubic outputs
            for i, (_, ref) in enumerate(validation)]
    val = {k: float(np.mean([psnr(ref, fit_intensity(est, ref)) - b for (_, ref), est, b in zip(validation, v, base)]))
           for k, v in outputs.items()}
    best = max(val, key=val.get)
    return {"setting": best, "scored": outputs[best][nv:], "validation": val,
            "candidates": {k: v[nv:] for k, v in outputs.items()}}


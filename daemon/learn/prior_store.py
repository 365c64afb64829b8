"""The pretrained EM priors shipped in the package: one network per (network, S), a warm start for the session.

Layout: ``priors/<network>-x<S>/`` is a network state folder of :mod:`refscope.daemon.state.net_store` (``net.npz`` +
checksummed ``net.json`` + the ONNX export), written by ``benchmarks/train_prior.py``; ``priors/MODEL_CARD.md``
says what each was trained on, how, and how it scores. A prior carries the identity normalisation: it is applied
in each LR frame's own units (:func:`refscope.models.prior.frame_normalisation`).

``REFSCOPE_PRIORS`` (a folder with the same layout) replaces the shipped folder, e.g. for leave-one-out benchmarks;
``REFSCOPE_PRIORS=none`` turns priors off.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refscope.models.network_names import resolve_network

from ..state.net_store import has_net, load_net, load_served

if TYPE_CHECKING:  # PyTorch is imported only by load_net
    from refscope.models.net_fit import NetFit

__all__ = ["SHIPPED_PRIORS", "priors_folder", "prior_folder", "load_prior", "load_served_prior"]

SHIPPED_PRIORS = Path(__file__).resolve().parent / "priors"


def priors_folder() -> Path | None:
    """The folder priors are read from (``REFSCOPE_PRIORS`` or the shipped one); None when turned off."""
    chosen = os.environ.get("REFSCOPE_PRIORS", "").strip()
    if chosen.lower() == "none":
        return None
    return Path(chosen) if chosen else SHIPPED_PRIORS


def prior_folder(network: str, scale: int, root: Path | None = None) -> Path | None:
    """The state folder of the ``network`` x``scale`` prior (``"auto"``: the network served at that scale), or
    None if there is none."""
    root = priors_folder() if root is None else root
    if root is None:
        return None
    folder = root / f"{resolve_network(network, scale)}-x{int(scale)}"
    return folder if has_net(folder) else None


def load_prior(network: str, scale: int, root: Path | None = None) -> "NetFit | None":
    """The ``network`` x``scale`` prior as a :class:`NetFit` (checksums verified), or None if there is none.

    Raises :class:`~refscope.daemon.errors.StateError` for a damaged prior (a broken install says so, it is never
    silently skipped).
    """
    folder = prior_folder(network, scale, root)
    if folder is None:
        return None
    network = resolve_network(network, scale)
    fit = load_net(folder)
    if (fit.network, fit.scale) != (network, int(scale)):
        from ..errors import StateError

        raise StateError(f"{folder}: holds a {fit.network} x{fit.scale} network, not {network} x{scale}")
    return fit


def load_served_prior(scale: int, root: Path | None = None) -> "tuple[bytes, Any] | None":
    """The x``scale`` prior of the network served at that scale in its served form: ONNX bytes (checksum verified)
    and :class:`~refscope.models.manifest.ModelManifest` (identity normalisation: the engine applies it in each
    frame's own units), without PyTorch; None if there is none. Raises
    :class:`~refscope.daemon.errors.StateError` for a damaged prior or one of another scale."""
    folder = prior_folder("auto", scale, root)
    if folder is None:
        return None
    data, manifest = load_served(folder)
    if int(manifest.scale) != int(scale):
        from ..errors import StateError

        raise StateError(f"{folder}: holds a x{manifest.scale} network, not x{scale}")
    return data, manifest

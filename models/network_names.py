"""The names of the trainable networks and the one ``"auto"`` stands for at each scale (no PyTorch import).

:data:`NETWORK_NAMES` are the keys of :data:`refscope.models.networks.NETWORKS` (a test keeps them in step), so
that command-line parsers and configuration checks can list them without importing PyTorch.
:func:`resolve_network` turns ``"auto"`` into the network refscope serves at a scale (:data:`AUTO_NETWORK`): today
the full-resolution ``fullres`` body at every scale (32 channels at S = 2, where its cost per output pixel is
highest, 48 above). On the real SEM pairs it recovers +0.03 to +0.33 dB more than the half-resolution ``compact``
body and serves a 1280 x 944 output in 0.05-0.1 s on two cores (``benchmarks/RESULTS.md``, issue 12). The map is
per scale so that a scale can get another network without changing any caller.
"""
from __future__ import annotations

__all__ = ["NETWORK_NAMES", "AUTO_NETWORK", "resolve_network", "check_scale"]

#: Registered network names (:data:`refscope.models.networks.NETWORKS`).
NETWORK_NAMES: tuple[str, ...] = ("compact", "fullres", "emsr")

#: The network ``"auto"`` stands for, by scale S (a larger S gets the entry of the largest key).
AUTO_NETWORK: dict[int, str] = {2: "fullres", 3: "fullres"}


def check_scale(scale: int) -> int:
    """``scale`` as an int; ``ValueError`` unless it is an integer from 2 to 8."""
    if isinstance(scale, bool) or int(scale) != scale or not 2 <= int(scale) <= 8:
        raise ValueError(f"scale must be an integer from 2 to 8, got {scale!r}")
    return int(scale)


def resolve_network(name: str, scale: int) -> str:
    """``name`` itself, or for ``"auto"`` the network refscope serves at x``scale`` (:data:`AUTO_NETWORK`).

    Raises
    ------
    KeyError
        For a name that is neither ``"auto"`` nor in :data:`NETWORK_NAMES`; the message lists the known ones.
    ValueError
        For ``"auto"`` with a scale outside 2..8.
    """
    if name == "auto":
        return AUTO_NETWORK[min(check_scale(scale), max(AUTO_NETWORK))]
    if name not in NETWORK_NAMES:
        raise KeyError(f"unknown network {name!r}; known networks: auto, {', '.join(NETWORK_NAMES)}")
    return name

"""Which learned model serves -- the paired library or the trained network -- kept consistent everywhere.

Two learners promote models while the daemon runs: the live learner (a new paired library, :mod:`refscope.daemon.learn.learner`)
and the background trainer (a network, :mod:`refscope.daemon.learn.trainer`). Each promotion has beaten the model serving at the
time and bicubic on held-out reference area, so the latest promotion is the *champion*, which method
``"best"`` serves. :class:`Champion` applies a promotion to the :class:`~refscope.daemon.serve.engine.ServingEngine` and records it
in ``<state_dir>/best.json`` (the file ``refscope enhance --method best`` reads too), so that a restart serves
the same model: :meth:`Champion.restore` loads the network back when ``best.json`` names it.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from refscope.models.pipeline import FittedModel

from ..errors import StateError
from ..state.net_store import has_net, load_best, load_served, save_best
from ..wire.status import TrainingRound
from .engine import ServingEngine

__all__ = ["Champion"]

_log = logging.getLogger("refscope.champion")


class Champion:
    """Applies promotions to the engine and ``best.json`` (thread-safe: learner and trainer threads call it).

    Args:
        engine: the serving engine.
        state_dir: the daemon's state folder.
    """

    def __init__(self, engine: ServingEngine, state_dir: Path) -> None:
        self._engine = engine
        self._state_dir = Path(state_dir)
        self._lock = threading.Lock()

    def current(self) -> tuple[str, tuple[int, int, str]]:
        """(kind, token): kind ``"net"``, ``"paired"`` or ``"bicubic"``; the token changes with every swap."""
        state = self._engine.describe()
        if state["champion"] == "net" and state["net_version"]:
            kind = "net"
        else:
            kind = "paired" if self._engine.has_model else "bicubic"
        return kind, (int(state["version"]), int(state["net_version"]), str(state["champion"]))

    def restore(self, net_version: int) -> bool:
        """At start: serve the saved network as ``net_version`` when ``best.json`` names it; True if it does.

        A network that cannot be loaded is logged and the library (or bicubic) serves instead.
        """
        try:
            best = load_best(self._state_dir)
        except StateError as exc:
            _log.warning("%s; serving the library", exc)
            return False
        if best is None or best.get("best") != "net" or not has_net(self._state_dir):
            return False
        try:
            model_bytes, manifest = load_served(self._state_dir)
            self._engine.set_net(model_bytes, manifest, max(1, int(net_version)))
        except (StateError, ValueError) as exc:
            _log.error("the saved network could not be served (%s); serving the library", exc)
            return False
        return True

    def library_promoted(self, model: FittedModel, version: int, *, serve: bool = True) -> None:
        """Serve library ``version`` (learner thread); ValueError from the engine when it is refused.

        ``serve=False``: the network that serves stays the champion (it beat the library on the library's own
        reference); the library is loaded as the session's library (support and safe baseline of the blend,
        method ``"paired"``) and ``best.json`` keeps naming the network."""
        with self._lock:
            self._engine.set_model(model, version, champion=serve)
            if serve:
                self._write("paired", {"reason": f"paired library v{version} promoted by the live learner",
                                       "version": int(version)})

    def net_promoted(self, model_bytes: bytes, manifest: Any, version: int, result: TrainingRound) -> None:
        """Serve network ``version`` (trainer thread), promoted by the training round ``result``; ValueError from
        the engine when it is refused."""
        with self._lock:
            self._engine.set_net(model_bytes, manifest, version)
            champion = result.champion_kind if result.champion_kind is not None else "champion"
            scores = {"net": result.candidate, champion: result.champion, "bicubic": {"d_psnr_db": 0.0, "d_ssim": 0.0}}
            self._write("net", {"reason": result.reason, "version": int(version), "scores": scores,
                                "held_out_subimages": result.held_out, "round": result.round})

    def _write(self, best: str, extra: Mapping[str, Any]) -> None:
        try:
            save_best(self._state_dir, {"best": best, "validated": True, "scale": self._engine.scale,
                                        "command": "daemon", **extra,
                                        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        except (OSError, ValueError) as exc:  # the engine serves it; a restart may serve the previous champion
            _log.error("%s/best.json not updated (%s)", self._state_dir, exc)

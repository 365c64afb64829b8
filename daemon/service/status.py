"""The daemon's ``status``: everything the TUI and scripts see, as one typed
:class:`~refscope.daemon.wire.status.DaemonStatus` (sent as JSON by the control server: ``status.to_dict()``).

One of the :class:`~refscope.daemon.service.daemon.Daemon`'s collaborators: it is given the daemon's books, queue and
engine at construction and each component as the daemon starts it (:meth:`StatusReport.attach`); a component not
started (yet) reads as absent.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import DaemonConfig
from ..learn.pairing import RoleClassifier
from ..serve.engine import ServingEngine
from ..serve.fusion_window import FusionWindow
from ..state.model_domain import DomainWatch
from .frame_path import LearnerSlot, ServeQueue
from .tally import Tally
from ..wire.status import (CatalogueCounts, DaemonStatus, DomainStatus, FolderOutputStatus, FrameCounts, FusionStatus,
                           IngestSourceStatus, Latency, ModelStatus, PublishStatus, Queues, Roles, TrainerStatus)

__all__ = ["StatusReport"]


class StatusReport:
    """``status()`` of a daemon (see :class:`~refscope.daemon.wire.status.DaemonStatus`).

    Args:
        config: the daemon's configuration.
        tally, engine, classify, fusion, domain_watch, serve_queue, learners: the daemon's books and parts.
        running, paused, uptime_s, endpoints: the daemon's lifecycle, read at each call.
    """

    def __init__(self, config: DaemonConfig, *, tally: Tally, engine: ServingEngine, classify: RoleClassifier,
                 fusion: FusionWindow, domain_watch: DomainWatch, serve_queue: ServeQueue, learners: LearnerSlot,
                 running: Callable[[], bool], paused: Callable[[], bool], uptime_s: Callable[[], float],
                 endpoints: Callable[[], dict[str, str | None]]) -> None:
        self.config = config
        self._tally = tally
        self._engine = engine
        self._classify = classify
        self._fusion = fusion
        self._domain_watch = domain_watch
        self._serve_queue = serve_queue
        self._learners = learners
        self._running, self._paused, self._uptime_s, self._endpoints = running, paused, uptime_s, endpoints
        self._parts: dict[str, Any] = {}

    def attach(self, **parts: Any) -> None:
        """Components as the daemon starts them: ``catalogue``, ``folder``, ``stream``, ``events``, ``control``,
        ``monitor``, ``trainer``, ``ingest`` (the ingest loop: the latest role) and ``sources``."""
        unknown = set(parts) - {"catalogue", "folder", "stream", "events", "control", "monitor", "trainer", "ingest",
                                "sources"}
        if unknown:
            raise TypeError(f"StatusReport.attach: unknown part(s) {sorted(unknown)}")
        self._parts.update(parts)

    def status(self) -> DaemonStatus:
        """Everything the TUI shows (see :class:`~refscope.daemon.wire.status.DaemonStatus`; times in seconds)."""
        part = self._parts.get
        counts = self._tally.counts.snapshot()
        errors = self._tally.errors.snapshot()
        n_lat, latency, model_s, processing = self._tally.latency_summary()
        ingest: dict[str, IngestSourceStatus] = {}
        for name, source in part("sources") or ():
            try:
                stats = source.stats()
                ingest[name] = IngestSourceStatus(
                    received=stats.received, rejected=stats.rejected, rejected_by_reason=dict(stats.rejected_by_reason),
                    last_error=stats.last_error, recent=tuple(getattr(stats, "recent", ())))
            except Exception as exc:  # noqa: BLE001
                ingest[name] = IngestSourceStatus(error=str(exc))
        merged = dict(errors)
        for info in ingest.values():
            for reason, n in info.rejected_by_reason.items():
                merged[reason] = merged.get(reason, 0) + n
        folder = None
        if part("folder") is not None:
            fs = part("folder").stats()
            folder = FolderOutputStatus(
                written=fs.written, replaced=fs.replaced, dropped=fs.dropped, errors=fs.errors,
                queue_depth=fs.queue_depth, dropped_by_reason=dict(fs.dropped_by_reason),
                errors_by_reason=dict(fs.errors_by_reason), last_error=fs.last_error,
                retry_waiting=fs.retry_waiting, retried=fs.retried)
            for reason, n in fs.errors_by_reason.items():
                merged[f"write_{reason}"] = merged.get(f"write_{reason}", 0) + n
            for reason, n in fs.dropped_by_reason.items():
                merged[f"output_{reason}"] = merged.get(f"output_{reason}", 0) + n
        learner = self._learners.current.status() if self._learners.current is not None else None
        if learner is not None:
            for reason, n in learner.rejected_by_reason.items():
                merged[f"reference_{reason}"] = merged.get(f"reference_{reason}", 0) + n
        dropped = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("dropped.")}
        skipped = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("skipped.")}
        model = ModelStatus.from_dict({**self._engine.describe(),
                                       "validation_delta_db": learner.held_out_delta_db if learner else None})
        catalogue = None
        if part("catalogue") is not None:
            try:
                c = part("catalogue").counts()
                catalogue = CatalogueCounts(frames=dict(c.frames), pairs=c.pairs, events=c.events, models=c.models,
                                            promoted_models=c.promoted_models)
            except Exception as exc:  # noqa: BLE001 - closed or failing: say so
                catalogue = CatalogueCounts(error=str(exc))
        return DaemonStatus(
            running=self._running(),
            paused=self._paused(),
            uptime_s=self._uptime_s(),
            frames=FrameCounts(
                in_=counts.get("in", 0), in_lr=counts.get("in_lr", 0) + counts.get("in_both", 0),
                in_hr=counts.get("in_hr", 0) + counts.get("in_both", 0), in_both=counts.get("in_both", 0),
                out=counts.get("out", 0), written=counts.get("written", 0),
                dropped=sum(dropped.values()), dropped_by_reason=dropped, skipped=skipped,
                # every failure, wherever it happened (ingest, serving, learning, writing): errors_by_reason below
                errors=sum(merged.values()), errors_by_reason=errors),
            roles=Roles(live_pixel_size_nm=self._classify.lr_pixel_size_nm,
                        last=part("ingest").last_role if part("ingest") is not None else None),
            errors_by_reason=merged,
            last_error=self._tally.last_error,
            latency=Latency(window=n_lat, p50_s=latency["p50"], p99_s=latency["p99"], model_p50_s=model_s["p50"],
                            model_p99_s=model_s["p99"], model_mean_s=model_s["mean"],
                            processing_p50_s=processing["p50"], processing_p99_s=processing["p99"]),
            queues=Queues(serve=self._serve_queue.items.qsize(), serve_limit=self._serve_queue.items.maxsize,
                          output=folder.queue_depth if folder else 0,
                          output_limit=self.config.publish.output_queue_limit,
                          learner=learner.queued if learner else 0),
            model=model,
            domain=DomainStatus.from_dict(self._domain_watch.status()),
            library_size=model.library_size,
            model_version=model.version,
            method=model.method,
            validation_delta_db=model.validation_delta_db,
            learner=learner,
            trainer=part("trainer").status() if part("trainer") is not None else TrainerStatus(enabled=False),
            ingest=ingest,
            publish=PublishStatus(folder=folder, stream=part("stream").stats() if part("stream") is not None else None,
                                  events=part("events").stats() if part("events") is not None else None),
            control=part("control").stats() if part("control") is not None else None,
            quality=part("monitor").status() if part("monitor") is not None else None,
            fusion=FusionStatus.from_dict(self._fusion.status()),
            catalogue=catalogue,
            endpoints=self._endpoints(),
            state_dir=str(self.config.state_dir),
            out_dir=str(self.config.publish.out_dir) if self.config.publish.out_dir else None,
        )

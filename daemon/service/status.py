"""The daemon's ``status``: everything the TUI and scripts see, as one typed
:class:`~refscope.daemon.wire.status.DaemonStatus` (sent as JSON by the control server: ``status.to_dict()``).

Part of :class:`~refscope.daemon.service.daemon.Daemon` (a mixin reading its counters, queues and components).
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ..wire.status import (CatalogueCounts, DaemonStatus, DomainStatus, FolderOutputStatus, FrameCounts, FusionStatus,
                           IngestSourceStatus, Latency, ModelStatus, PublishStatus, Queues, Roles, TrainerStatus)

__all__ = ["StatusReport"]


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "mean": None}
    array = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(array, 50)), "p99": float(np.percentile(array, 99)), "mean": float(array.mean())}


class StatusReport:
    """``status()`` of :class:`~refscope.daemon.service.daemon.Daemon` (mixin)."""

    def status(self) -> DaemonStatus:
        """Everything the TUI shows (see :class:`~refscope.daemon.wire.status.DaemonStatus`; times in seconds)."""
        counts = self._counts.snapshot()
        errors = self._errors.snapshot()
        with self._lat_lock:
            latency = _percentiles(self._latency)
            model_s = _percentiles(self._model_s)
            processing = _percentiles(self._processing_s)
            n_lat = len(self._latency)
        ingest: dict[str, IngestSourceStatus] = {}
        for name, source in self._sources:
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
        if self.folder is not None:
            fs = self.folder.stats()
            folder = FolderOutputStatus(
                written=fs.written, replaced=fs.replaced, dropped=fs.dropped, errors=fs.errors,
                queue_depth=fs.queue_depth, dropped_by_reason=dict(fs.dropped_by_reason),
                errors_by_reason=dict(fs.errors_by_reason), last_error=fs.last_error,
                retry_waiting=fs.retry_waiting, retried=fs.retried)
            for reason, n in fs.errors_by_reason.items():
                merged[f"write_{reason}"] = merged.get(f"write_{reason}", 0) + n
            for reason, n in fs.dropped_by_reason.items():
                merged[f"output_{reason}"] = merged.get(f"output_{reason}", 0) + n
        learner = self.learner.status() if self.learner is not None else None
        if learner is not None:
            for reason, n in learner.rejected_by_reason.items():
                merged[f"reference_{reason}"] = merged.get(f"reference_{reason}", 0) + n
        dropped = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("dropped.")}
        skipped = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("skipped.")}
        model = ModelStatus.from_dict({**self.engine.describe(),
                                       "validation_delta_db": learner.held_out_delta_db if learner else None})
        catalogue = None
        if self.catalogue is not None:
            try:
                c = self.catalogue.counts()
                catalogue = CatalogueCounts(frames=dict(c.frames), pairs=c.pairs, events=c.events, models=c.models,
                                            promoted_models=c.promoted_models)
            except Exception as exc:  # noqa: BLE001 - closed or failing: say so
                catalogue = CatalogueCounts(error=str(exc))
        return DaemonStatus(
            running=self._started and not self._stopped,
            paused=self.paused,
            uptime_s=time.time() - self._started_at if self._started else 0.0,
            frames=FrameCounts(
                in_=counts.get("in", 0), in_lr=counts.get("in_lr", 0) + counts.get("in_both", 0),
                in_hr=counts.get("in_hr", 0) + counts.get("in_both", 0), in_both=counts.get("in_both", 0),
                out=counts.get("out", 0), written=counts.get("written", 0),
                dropped=sum(dropped.values()), dropped_by_reason=dropped, skipped=skipped,
                # every failure, wherever it happened (ingest, serving, learning, writing): errors_by_reason below
                errors=sum(merged.values()), errors_by_reason=errors),
            roles=Roles(live_pixel_size_nm=self._classify.lr_pixel_size_nm, last=self._last_role),
            errors_by_reason=merged,
            last_error=self._last_error,
            latency=Latency(window=n_lat, p50_s=latency["p50"], p99_s=latency["p99"], model_p50_s=model_s["p50"],
                            model_p99_s=model_s["p99"], model_mean_s=model_s["mean"],
                            processing_p50_s=processing["p50"], processing_p99_s=processing["p99"]),
            queues=Queues(serve=self._serve_queue.qsize(), serve_limit=self._serve_queue.maxsize,
                          output=folder.queue_depth if folder else 0,
                          output_limit=self.config.publish.output_queue_limit,
                          learner=learner.queued if learner else 0),
            model=model,
            domain=DomainStatus.from_dict(self.domain_watch.status()),
            library_size=model.library_size,
            model_version=model.version,
            method=model.method,
            validation_delta_db=model.validation_delta_db,
            learner=learner,
            trainer=self.trainer.status() if self.trainer is not None else TrainerStatus(enabled=False),
            ingest=ingest,
            publish=PublishStatus(folder=folder, stream=self.stream.stats() if self.stream is not None else None,
                                  events=self.events.stats() if self.events is not None else None),
            control=self.control.stats() if self.control is not None else None,
            quality=self.monitor.status() if self.monitor is not None else None,
            fusion=FusionStatus.from_dict(self.fusion.status()),
            catalogue=catalogue,
            endpoints=self.endpoints,
            state_dir=str(self.config.state_dir),
            out_dir=str(self.config.publish.out_dir) if self.config.publish.out_dir else None,
        )

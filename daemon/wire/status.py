"""The daemon's ``status``, typed: what the control endpoint's ``status`` reply carries, and a training round's result.

:class:`DaemonStatus` is built by the service room (:meth:`Daemon.status()
<refscope.daemon.service.daemon.Daemon.status>`), sent by the control server as ``{"status": status.to_dict()}``
and read back by the TUI, the live demo and scripts with :meth:`DaemonStatus.from_dict`. Every part is a frozen
dataclass whose fields are the JSON keys of that part of the reply (``frames.in`` is :attr:`FrameCounts.in_`, the
one key that is a Python keyword), in the reply's order, so ``to_dict`` gives exactly the document the daemon has
always sent (README "Daemon"). Parts whose content is the producer's own free-form record (a domain's description,
a reference request's payload, the monitor's recent history, a round's scores) stay JSON mappings.

``from_dict`` is tolerant: a key an older daemon does not send takes the field's default (0, None, empty, or a
part of defaults), a key a newer daemon adds is ignored; values are taken as sent (no coercion).

:class:`TrainingRound` is the result of one background-training round (:mod:`refscope.daemon.learn.train_round`),
also the trainer's ``last`` in the status and in ``<state_dir>/trainer/trainer.json``: its keys depend on how
the round ended, so fields that a round did not produce are left out of :meth:`TrainingRound.to_dict`.

Times are seconds, sizes MB, pixel sizes nm, scores dB over bicubic unless a name says otherwise.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

__all__ = ["DaemonStatus", "FrameCounts", "Roles", "Latency", "Queues", "ModelStatus", "DomainStatus",
           "LearnerStatus", "TrainingRound", "TrainerStatus", "IngestSourceStatus", "FolderOutputStatus",
           "StreamStats", "PublishStatus", "ControlStats", "HookStatus", "ReferenceRequests", "DriftSignal",
           "QualityStatus", "FusionStatus", "CatalogueCounts"]

P = TypeVar("P", bound="_Part")


# ------------------------------------------------------------------------------------------------ machinery


def _part(cls: type, *, optional: bool = False) -> Any:
    """A nested part (``optional``: None when the daemon has none, e.g. no learner)."""
    if optional:
        return field(default=None, metadata={"part": cls})
    return field(default_factory=cls, metadata={"part": cls})


def _parts(cls: type) -> Any:
    """A mapping of name -> part (the ingest sources)."""
    return field(default_factory=dict, metadata={"part": cls, "each": True})


def _mapping() -> Any:
    return field(default_factory=dict)


def _sequence() -> Any:
    """A JSON list, held as a tuple."""
    return field(default=(), metadata={"sequence": True})


def _omitted(**metadata: Any) -> Any:
    """A key sent only when it has a value (None: the key is absent); with ``alone``, when it has one it is the only
    key sent (a part that could not be read says only why)."""
    return field(default=None, metadata={"omit_none": True, **metadata})


def _plain(value: Any) -> Any:
    """``value`` as JSON-shaped Python: parts as dicts, mappings as dicts, tuples and lists as lists."""
    if isinstance(value, _Part):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


class _Part:
    """Field-driven ``to_dict`` / ``from_dict`` for the frozen dataclasses below (see the module docstring)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of this part (the control reply's keys and values)."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is not None and f.metadata.get("alone"):  # e.g. only "error": the rest could not be read
                return {f.metadata.get("key", f.name): _plain(value)}
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.metadata.get("key", f.name)] = _plain(value)
        return out

    @classmethod
    def from_dict(cls: type[P], document: Mapping[str, Any] | None) -> P:
        """Read this part from its JSON document; missing keys take the defaults, unknown keys are ignored."""
        if not isinstance(document, Mapping):
            return cls()
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            key = f.metadata.get("key", f.name)
            if key not in document:
                continue
            value = document[key]
            part = f.metadata.get("part")
            if part is not None and f.metadata.get("each"):
                value = ({str(name): part.from_dict(item) for name, item in value.items()}
                         if isinstance(value, Mapping) else {})
            elif part is not None:
                value = part.from_dict(value) if isinstance(value, Mapping) else (
                    None if f.default is None else part())
            elif f.metadata.get("sequence") and isinstance(value, list):
                value = tuple(value)
            values[f.name] = value
        return cls(**values)


# ------------------------------------------------------------------------------------------------ parts


@dataclass(frozen=True)
class FrameCounts(_Part):
    """``frames``: counts since the start. ``in_`` (key ``"in"``) every frame received; ``in_lr``/``in_hr`` by
    role (a frame both a reference and a live frame counts in both and in ``in_both``); ``out`` enhanced,
    ``written`` written to the output folder; ``dropped`` (by reason) never served; ``skipped`` by reason (e.g.
    ``already_seen`` after a restart); ``errors`` every failure anywhere (the sum of the status's
    ``errors_by_reason``), ``errors_by_reason`` those of the frame path itself."""

    in_: int = field(default=0, metadata={"key": "in"})
    in_lr: int = 0
    in_hr: int = 0
    in_both: int = 0
    out: int = 0
    written: int = 0
    dropped: int = 0
    dropped_by_reason: Mapping[str, int] = _mapping()
    skipped: Mapping[str, int] = _mapping()
    errors: int = 0
    errors_by_reason: Mapping[str, int] = _mapping()


@dataclass(frozen=True)
class Roles(_Part):
    """``roles``: the live stream's pixel size (nm; None before the first LR frame) and the latest frame's role
    and why (``{"source", "role", "reason"}``), None before any frame."""

    live_pixel_size_nm: float | None = None
    last: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Latency(_Part):
    """``latency`` over the last ``window`` served frames, seconds (None before any): arrival to published
    (``p50_s``/``p99_s``), the model alone, and the whole processing of a frame."""

    window: int = 0
    p50_s: float | None = None
    p99_s: float | None = None
    model_p50_s: float | None = None
    model_p99_s: float | None = None
    model_mean_s: float | None = None
    processing_p50_s: float | None = None
    processing_p99_s: float | None = None


@dataclass(frozen=True)
class Queues(_Part):
    """``queues``: frames waiting to be served (of ``serve_limit``), outputs waiting to be written (of
    ``output_limit``), references waiting for the learner."""

    serve: int = 0
    serve_limit: int = 0
    output: int = 0
    output_limit: int = 0
    learner: int = 0


@dataclass(frozen=True)
class ModelStatus(_Part):
    """``model``: the serving state (:meth:`ServingEngine.describe
    <refscope.daemon.serve.engine.ServingEngine.describe>`) and the serving model's held-out ΔPSNR
    (``validation_delta_db``, dB; None when not measured). ``safe_baseline_sigma_px``: σ of the safe baseline
    outputs are pulled toward (None: no safe blend); ``safe_blend_share``: share of the latest served frame's
    pixels the baseline contributed to (None: the blend did not run on it)."""

    version: int = 0
    method: str | None = None
    served_by: str | None = None
    backend: str | None = None
    scale: int | None = None
    sigma_n: float | None = None
    library_size: int = 0
    providers: tuple[str, ...] = _sequence()
    onnx_note: str | None = None
    net_version: int = 0
    champion: str | None = None
    warming: bool = False
    max_memory_mb: float | None = None
    self_ensemble: int = 1
    validation_delta_db: float | None = None
    safe_baseline_sigma_px: float | None = None
    safe_blend_share: float | None = None


@dataclass(frozen=True)
class DomainStatus(_Part):
    """``domain``: the serving model's domain (:meth:`ModelDomain.to_dict
    <refscope.daemon.state.model_domain.ModelDomain.to_dict>`, None without a model), frames served outside
    it, and the latest such message."""

    model: Mapping[str, Any] | None = None
    frames_outside: int = 0
    last: str | None = None


@dataclass(frozen=True)
class LearnerStatus(_Part):
    """A snapshot of the learner (any thread may ask); the status's ``learner``.

    Attributes:
        pairs_learned: references paired and fitted (whether or not the candidate was promoted).
        references_rejected: references that could not be learned from.
        rejected_by_reason: ``references_rejected`` by reason slug
            (:data:`~refscope.daemon.learn.pairing.PAIRING_REASONS` or ``"fit_failed"``); a copy.
        references_dropped: references dropped unprocessed because the queue was full.
        queued: references waiting.
        busy: a reference is being processed now.
        library_size: pairs in the serving model's library (0: bicubic).
        model_version: version of the serving model (0: bicubic, no learned model).
        held_out_delta_db: the serving model's ΔPSNR over bicubic (dB) on the held-out area of the latest
            reference it was judged on; 0.0 for bicubic; None when not measured yet.
        last_decision_reason: why the latest candidate was (not) promoted, or None.
        last_error: the latest rejection or failure message, or None.
        models_promoted: candidates promoted so far.
        models_rejected: candidates not promoted so far.
        last_reference_delta_db: held-out ΔPSNR (dB) of the model that was serving when the newest reference
            arrived, measured on that reference before learning from it (out-of-sample); None before any.
        recent_frames: LR frames remembered for pairing now.
        recent_mb: pixels those frames hold, MB (bounded by ``serve.max_memory_mb``'s share for them).
    """

    pairs_learned: int = 0
    references_rejected: int = 0
    rejected_by_reason: dict[str, int] = _mapping()
    references_dropped: int = 0
    queued: int = 0
    busy: bool = False
    library_size: int = 0
    model_version: int = 0
    held_out_delta_db: float | None = None
    last_decision_reason: str | None = None
    last_error: str | None = None
    models_promoted: int = 0
    models_rejected: int = 0
    last_reference_delta_db: float | None = None
    recent_frames: int = 0
    recent_mb: float = 0.0


@dataclass(frozen=True)
class TrainingRound(_Part):
    """The result of one background-training round (see :func:`~refscope.daemon.learn.train_round.run_round`).

    Attributes:
        status: ``"promoted"``, ``"kept"``, ``"no_data"`` or ``"failed"``.
        reason: why (the promotion decision, or what failed).
        round: 1, 2, ... (None for a failure of the supervisor itself).
        network, strategy: what was trained; champion_kind: what it was judged against (``"paired"``, ``"net"``,
            ``"bicubic"``); net_version: the version it gets (got) if promoted.
        candidate, champion: held-out scores (mean ``d_psnr_db``/``d_ssim`` and per subimage); champion None for
            bicubic. warm_start: ``"checkpoint"``, ``"network"``, ``"prior"`` or None.
        steps: optimiser steps per phase; train_s, round_s: seconds; pairs, held_out: counts; sources: [LR, HR]
            files of each pair trained on; checkpointed: the candidate was kept for the next round.
        trained: what the round trained: ``"network"`` (the session network, from its warm start) or
            ``"companion"`` (a second network from scratch, :mod:`refscope.models.net_blend`);
            companion_weight: the companion's share in the candidate (0: the network alone; None: no companion).
            baseline_share: the safe baseline's share in the candidate (0: the networks alone; None: not chosen,
            ``trainer.baseline_share`` off).
        spec: the round's :class:`~refscope.daemon.learn.train_round.RoundSpec` as a dict (a round that raised).

    Fields a round did not produce are None and left out of :meth:`to_dict`; ``champion`` and ``warm_start``
    (which may be None in a validated round) are written whenever the round was validated (``candidate`` set).
    """

    round: int | None = _omitted()
    network: str | None = _omitted()
    strategy: str | None = _omitted()
    champion_kind: str | None = _omitted()
    net_version: int | None = _omitted()
    status: str = "failed"
    reason: str | None = None
    candidate: Mapping[str, Any] | None = _omitted()
    champion: Mapping[str, Any] | None = field(default=None, metadata={"validated": True})
    warm_start: str | None = field(default=None, metadata={"validated": True})
    steps: tuple[Any, ...] | None = _omitted(sequence=True)
    train_s: float | None = _omitted()
    round_s: float | None = _omitted()
    pairs: int | None = _omitted()
    held_out: int | None = _omitted()
    sources: tuple[Any, ...] | None = _omitted(sequence=True)
    checkpointed: bool | None = _omitted()
    trained: str | None = _omitted()
    companion_weight: float | None = _omitted()
    baseline_share: float | None = _omitted()
    spec: Mapping[str, Any] | None = _omitted()

    @property
    def validated(self) -> bool:
        """The candidate was scored on held-out reference area."""
        return self.candidate is not None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if not self.validated:
            for f in fields(self):
                if f.metadata.get("validated"):
                    out.pop(f.name)
        return out


@dataclass(frozen=True)
class TrainerStatus(_Part):
    """``trainer``: the background trainer; only ``{"enabled": false}`` when there is none (``trainer.enabled``
    false). ``busy`` while a round runs (for ``running_s`` seconds); ``rounds``, ``promotions``, ``failures`` so
    far; ``net_version`` of the promoted network (0: none); ``pairs``/``held_out`` stored; ``rounds_left`` before
    waiting for a new pair; ``network``, ``strategy``, ``round_s`` as configured; ``last`` round's result;
    ``held_s`` seconds training was held for serving, ``holds_skipped`` holds skipped so training is not starved."""

    enabled: bool = False
    busy: bool = False
    running_s: float | None = None
    rounds: int = 0
    promotions: int = 0
    failures: int = 0
    net_version: int = 0
    pairs: int = 0
    held_out: int = 0
    rounds_left: int = 0
    network: str | None = None
    strategy: str | None = None
    round_s: float | None = None
    last: TrainingRound | None = _part(TrainingRound, optional=True)
    held_s: float = 0.0
    holds_skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() if self.enabled else {"enabled": False}


@dataclass(frozen=True)
class IngestSourceStatus(_Part):
    """``ingest.<source>``: frames ``received``, inputs ``rejected`` (by reason), the latest rejection, and the
    last inputs and what became of each (``recent``, oldest first). A source whose statistics could not be read
    has only ``error``."""

    received: int = 0
    rejected: int = 0
    rejected_by_reason: Mapping[str, int] = _mapping()
    last_error: str | None = None
    recent: tuple[str, ...] = _sequence()
    error: str | None = _omitted(alone=True)


@dataclass(frozen=True)
class FolderOutputStatus(_Part):
    """``publish.folder``: outputs written (``replaced`` an older output of the same frame), ``dropped`` and
    ``errors`` (by reason), the write queue's depth, outputs kept in ``<state>/spill/`` waiting to be written
    again (``retry_waiting``) and written on a retry (``retried``)."""

    written: int = 0
    replaced: int = 0
    dropped: int = 0
    errors: int = 0
    queue_depth: int = 0
    dropped_by_reason: Mapping[str, int] = _mapping()
    errors_by_reason: Mapping[str, int] = _mapping()
    last_error: str | None = None
    retry_waiting: int = 0
    retried: int = 0


@dataclass(frozen=True)
class StreamStats(_Part):
    """Counters of a PUB publisher: messages ``sent``, ``dropped`` (a subscriber ``hwm`` messages behind)."""

    sent: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class PublishStatus(_Part):
    """``publish``: the output folder, the frame stream and the event feed (None: not configured)."""

    folder: FolderOutputStatus | None = _part(FolderOutputStatus, optional=True)
    stream: StreamStats | None = _part(StreamStats, optional=True)
    events: StreamStats | None = _part(StreamStats, optional=True)


@dataclass(frozen=True)
class ControlStats(_Part):
    """Counters of the control server: requests answered, of those refused (``ok: false``) by reason."""

    requests: int = 0
    refused: int = 0
    refused_by_reason: dict[str, int] = _mapping()


@dataclass(frozen=True)
class HookStatus(_Part):
    """``quality.requests.hook``: the reference hook's name, requests delivered, failed and dropped, the latest
    failure."""

    name: str | None = None
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class ReferenceRequests(_Part):
    """``quality.requests``: reference requests ``made`` (by reason), ``received`` (answered), ``expired``; the
    ``outstanding`` one (``id``, ``t``, ``reason``, ``received``, ``age_s``) and the ``last`` request's payload;
    ``hook`` only when a reference hook is configured."""

    made: int = 0
    by_reason: Mapping[str, int] = _mapping()
    received: int = 0
    expired: int = 0
    outstanding: Mapping[str, Any] | None = None
    last: Mapping[str, Any] | None = None
    hook: HookStatus | None = _omitted(part=HookStatus)


@dataclass(frozen=True)
class DriftSignal(_Part):
    """One drift signal of ``quality.signals``: its window median ``value`` (None while the window fills),
    thresholds ``on``/``off`` (hysteresis), ``higher_is_worse``, ``raised``; for generic viewers the same as
    ``threshold`` (= on), ``direction`` (``"above"``: high is bad, ``"below"``) and ``over`` (= raised); the
    recent values (``history``)."""

    value: float | None = None
    on: float | None = None
    off: float | None = None
    higher_is_worse: bool = True
    raised: bool = False
    threshold: float | None = None
    direction: str = "above"
    over: bool = False
    history: tuple[float, ...] | None = _omitted(sequence=True)


@dataclass(frozen=True)
class QualityStatus(_Part):
    """``quality``: the quality monitor (:mod:`refscope.daemon.service.monitor`). ``baseline`` what the signals
    are measured against; ``signals`` by name; ``drift`` while any is raised; ``frames_measured``; the latest
    frame's mean confidence and data consistency ρ, frames flagged for it; the signal ``window``; reference
    requests; the recent frames' signals (``history``, oldest first)."""

    enabled: bool = False
    model_version: int = 0
    baseline: str | None = None
    signals: Mapping[str, DriftSignal] = _parts(DriftSignal)
    drift: bool = False
    frames_measured: int = 0
    confidence_mean: float | None = None
    consistency_last: float | None = None
    consistency_flagged: int = 0
    window: int = 0
    requests: ReferenceRequests = _part(ReferenceRequests)
    history: tuple[Mapping[str, Any], ...] = _sequence()


@dataclass(frozen=True)
class FusionStatus(_Part):
    """``fusion`` (:meth:`FusionWindow.status <refscope.daemon.serve.fusion_window.FusionWindow.status>`): frames
    served ``fused`` / ``alone`` so far, window restarts by reason and the latest, the last registered shift (LR
    px, [y, x]) and fusion time (s), the configuration, and the frames fused into the last served frame."""

    fused: int = 0
    alone: int = 0
    resets: Mapping[str, int] = _mapping()
    last_reset: str | None = None
    last_shift_yx: tuple[float, ...] | None = field(default=None, metadata={"sequence": True})
    last_s: float | None = None
    enabled: bool = False
    auto_static_stage: bool = False
    window: int = 0
    frames: int = 0


@dataclass(frozen=True)
class CatalogueCounts(_Part):
    """``catalogue``: frames by status, pairs, events, models and promoted models recorded; only ``error`` when
    the catalogue could not be read (closed, failing)."""

    frames: Mapping[str, int] = _mapping()
    pairs: int = 0
    events: int = 0
    models: int = 0
    promoted_models: int = 0
    error: str | None = _omitted(alone=True)


@dataclass(frozen=True)
class DaemonStatus(_Part):
    """The daemon's ``status``: everything the TUI shows (the parts above; times in seconds).

    ``running`` between start and stop, ``paused`` (frames recorded, not served), ``uptime_s``; ``frames``,
    ``roles``; ``errors_by_reason`` every failure wherever it happened (ingest, serving, learning, writing) and
    ``last_error``; ``latency``, ``queues``; the serving ``model`` and its ``domain``, with ``library_size``,
    ``model_version``, ``method`` and ``validation_delta_db`` repeated at the top for scripts; ``learner`` (None
    while there is none), ``trainer``; ``ingest`` by source; ``publish``; ``control`` (None without an endpoint);
    ``quality`` (None without a monitor); ``fusion``; ``catalogue`` (None without one); the bound ``endpoints``
    (``control``, ``events``, ``pub``, ``zmq_ingest``: None when not bound); ``state_dir`` and ``out_dir``.
    """

    running: bool = False
    paused: bool = False
    uptime_s: float = 0.0
    frames: FrameCounts = _part(FrameCounts)
    roles: Roles = _part(Roles)
    errors_by_reason: Mapping[str, int] = _mapping()
    last_error: str | None = None
    latency: Latency = _part(Latency)
    queues: Queues = _part(Queues)
    model: ModelStatus = _part(ModelStatus)
    domain: DomainStatus = _part(DomainStatus)
    library_size: int = 0
    model_version: int = 0
    method: str | None = None
    validation_delta_db: float | None = None
    learner: LearnerStatus | None = _part(LearnerStatus, optional=True)
    trainer: TrainerStatus = _part(TrainerStatus)
    ingest: Mapping[str, IngestSourceStatus] = _parts(IngestSourceStatus)
    publish: PublishStatus = _part(PublishStatus)
    control: ControlStats | None = _part(ControlStats, optional=True)
    quality: QualityStatus | None = _part(QualityStatus, optional=True)
    fusion: FusionStatus = _part(FusionStatus)
    catalogue: CatalogueCounts | None = _part(CatalogueCounts, optional=True)
    endpoints: Mapping[str, str | None] = _mapping()
    state_dir: str | None = None
    out_dir: str | None = None


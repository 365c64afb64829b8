"""The sections of the daemon's configuration (``[ingest]``, ``[model]``, ``[serve]``, ``[publish]``,
``[control]``, ``[monitor]``, ``[trainer]``, ``[security]``, ``[fusion]``): frozen dataclasses, each key documented and checked
when the section is built (see :mod:`refscope.daemon.config` for how they are loaded and combined)."""
from __future__ import annotations

import fnmatch
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from refscope.models.fusion_config import MERGES as FUSION_MERGES
from refscope.models.nlm import SIGMA_N_RANGE
from refscope.models.self_ensemble import ENSEMBLE_SIZES

from .fields import ConfigError, check_endpoint, check_range, check_types, field_doc
from ..wire.curve import SECRET_SUFFIX, SERVER_NAME
from ..frames import FrameRole
from ..images.readers import DEFAULT_DETECTOR, DEFAULT_PATTERNS
from ..ingest.folder import FolderSourceConfig
from ..ingest.feed import ZmqSourceConfig
from ..wire.schema import METHODS

__all__ = ["METHODS", "HOOKS", "IngestConfig", "ModelConfig", "ServeConfig", "PublishConfig", "ControlConfig",
           "MonitorConfig", "TrainerConfig", "SecurityConfig", "FusionConfig"]



@dataclass(frozen=True)
class IngestConfig:
    """Where frames come from: an acquisition folder, a ZMQ socket, or both.

    Attributes:
        watch: acquisition folder the microscope writes TIFF/PNG files to (never modified); None: no folder.
        zmq_endpoint: endpoint refscope binds to receive v1 frame messages (see ``protocol``); None: no socket.
        zmq_pattern: ``"pull"`` (lossless) or ``"sub"`` (newest frames, drops when behind).
        zmq_max_message_bytes: largest message part accepted on ``zmq_endpoint``, bytes; larger ones are refused
            by libzmq (``ZMQ_MAXMSGSIZE``) before any memory is allocated, and their sender is disconnected.
        use_polling: scan ``watch`` periodically instead of using file-system events (network mounts).
        pixel_size_nm: pixel size for every frame, nm, overriding the files' metadata; None: from each file.
        hr_filename_pattern: file-name glob (case-insensitive) marking HR reference scans, e.g. ``"*_HR.tif"``.
        serve_finer_frames: a frame that only its finer pixel size marks as a reference is also a live frame
            (zoom series; :func:`refscope.daemon.learn.pairing.decide_role`).
        lr_filename_pattern: file-name glob marking live LR frames; files matching neither pattern are
            ``"auto"`` (the daemon decides from the pixel size).
        patterns: file-name globs (case-insensitive) of the files read from ``watch``; any other file appearing
            there is refused with its reason and logged (never skipped silently).
        detector: detector read from a file holding several (Velox EMD: HAADF, DF2, DF4, BF...); the others are
            logged and skipped.
    """

    SECTION: ClassVar[str] = "ingest"

    watch: Path | None = field(default=None, metadata=field_doc(
        "Acquisition folder the microscope writes TIFF/PNG files to; never modified (unset: no folder watching).",
        "/data/sem/incoming"))
    zmq_endpoint: str | None = field(default=None, metadata=field_doc(
        "ZMQ endpoint refscope binds to receive frames in the v1 wire format (unset: no ZMQ input).",
        "tcp://127.0.0.1:5555"))
    zmq_pattern: Literal["pull", "sub"] = field(default="pull", metadata=field_doc(
        'Socket type for zmq_endpoint: "pull" (lossless) or "sub" (drops frames when refscope falls behind).'))
    zmq_max_message_bytes: int = field(default=1 << 30, metadata=field_doc(
        "Largest message part accepted on zmq_endpoint, bytes (>= 65536); larger ones are refused before any memory "
        "is allocated (default 1 GiB: a 16384 x 16384 float32 frame)."))
    use_polling: bool = field(default=False, metadata=field_doc(
        "Scan the watched folder periodically instead of using file-system events (for network mounts)."))
    pixel_size_nm: float | None = field(default=None, metadata=field_doc(
        "Pixel size in nm for every frame, overriding the files' metadata (unset: read from each file).", 5.0))
    hr_filename_pattern: str | None = field(default=None, metadata=field_doc(
        "File-name glob (case-insensitive) marking HR reference scans (unset: decided from the pixel size).",
        "*_HR.tif"))
    lr_filename_pattern: str | None = field(default=None, metadata=field_doc(
        "File-name glob (case-insensitive) marking live LR frames (unset: decided from the pixel size).",
        "*_LR.tif"))
    patterns: tuple[str, ...] = field(default=DEFAULT_PATTERNS, metadata=field_doc(
        "File-name globs (case-insensitive) read from the watched folder: TIFF, PNG, DM3/DM4, Velox/Berkeley EMD, "
        "TIA SER, MRC; any other file that appears there is refused with its reason in the log, the status and "
        "the catalogue (a TIA .emi or a sidecar JSON as the companion of its image)."))
    detector: str = field(default=DEFAULT_DETECTOR, metadata=field_doc(
        "Detector read from a file that holds several (a Velox EMD with HAADF, DF2, DF4, BF...); the others are "
        "logged and skipped. A file with one detector is read whatever it is."))
    serve_finer_frames: bool = field(default=True, metadata=field_doc(
        "A frame that only its finer pixel size marks as a reference (a zoom series) is also enhanced as a live "
        "frame, and the live stream moves to its magnification."))

    def __post_init__(self) -> None:
        check_types(self, "ingest.")
        if self.watch is None and self.zmq_endpoint is None:
            raise ConfigError(
                "no ingest source: set ingest.watch (an acquisition folder) and/or ingest.zmq_endpoint", key="ingest.watch"
            )
        check_endpoint("ingest.zmq_endpoint", self.zmq_endpoint)
        check_range("ingest.zmq_max_message_bytes", self.zmq_max_message_bytes >= 65536, "an integer >= 65536",
                     self.zmq_max_message_bytes)
        if self.pixel_size_nm is not None:
            check_range("ingest.pixel_size_nm", self.pixel_size_nm > 0, "a positive number of nm", self.pixel_size_nm)
        for name in ("hr_filename_pattern", "lr_filename_pattern"):
            value = getattr(self, name)
            if value is not None:
                check_range(f"ingest.{name}", bool(value.strip()) and "/" not in value,
                             "a non-empty file-name glob without '/'", value)
        check_range("ingest.patterns", bool(self.patterns) and all(
            isinstance(p, str) and p.strip() and "/" not in p for p in self.patterns),
            "a non-empty list of file-name globs without '/'", self.patterns)
        check_range("ingest.detector", bool(self.detector.strip()), "a detector name such as \"HAADF\"",
                    self.detector)
        if self.hr_filename_pattern is not None and self.hr_filename_pattern == self.lr_filename_pattern:
            raise ConfigError(
                f"ingest.lr_filename_pattern is the same as ingest.hr_filename_pattern ({self.hr_filename_pattern!r})",
                key="ingest.lr_filename_pattern",
            )

    def role_for(self, filename: str | os.PathLike[str]) -> FrameRole:
        """Role of a file from its name: ``"hr"`` if it matches ``hr_filename_pattern`` (checked first),
        ``"lr"`` if it matches ``lr_filename_pattern``, else ``"auto"``."""
        name = Path(filename).name.lower()
        if self.hr_filename_pattern and fnmatch.fnmatchcase(name, self.hr_filename_pattern.lower()):
            return "hr"
        if self.lr_filename_pattern and fnmatch.fnmatchcase(name, self.lr_filename_pattern.lower()):
            return "lr"
        return "auto"

    def folder_source_config(self, **options: Any) -> FolderSourceConfig:
        """The :class:`FolderSourceConfig` for ``watch`` (role ``"auto"``: apply :meth:`role_for` per frame);
        ``options`` set its other fields. Raises ConfigError when ``watch`` is unset."""
        if self.watch is None:
            raise ConfigError("ingest.watch is not set", key="ingest.watch")
        return FolderSourceConfig(path=self.watch, use_polling=self.use_polling, pixel_size_nm=self.pixel_size_nm,
                                  role="auto", **{"patterns": self.patterns, "require_pixel_size": True, **options})

    def zmq_source_config(self, **options: Any) -> ZmqSourceConfig:
        """The :class:`ZmqSourceConfig` binding ``zmq_endpoint``; ``options`` set its other fields. Raises
        ConfigError when ``zmq_endpoint`` is unset."""
        if self.zmq_endpoint is None:
            raise ConfigError("ingest.zmq_endpoint is not set", key="ingest.zmq_endpoint")
        options = {"max_message_bytes": self.zmq_max_message_bytes, **options}
        return ZmqSourceConfig(endpoint=self.zmq_endpoint, pattern=self.zmq_pattern, bind=True, **options)


@dataclass(frozen=True)
class ModelConfig:
    """How the super-resolution model is learned from HR/LR pairs.

    Attributes:
        scale: output scale S (output pixel size = input pixel size / S), 2..8.
        method: ``"best"`` (default: the champion of library and trained network), ``"paired"`` (the library),
            ``"net"`` (the trained network), ``"paired-faithful"``, ``"original"`` or ``"bicubic"`` (no learning).
        library_size: number of patch pairs L kept in the library, >= 10.
        patch_size: patch edge n in output pixels, odd, >= 3; None: 4 * S + 1.
        sigma_n: filtering strength, 0.01..100 (:data:`refscope.models.nlm.SIGMA_N_RANGE`; relative to the measured
            noise for the paired method, library units for the NLM methods); None: the method's default.
    """

    SECTION: ClassVar[str] = "model"

    scale: int = field(default=2, metadata=field_doc("Output scale S: enhanced frames have S times more pixels per side (2 to 8)."))
    method: Literal["best", "paired", "net", "paired-faithful", "original", "bicubic"] = field(
        default="best", metadata=field_doc(
            'Served method: "best" (whichever of library and trained network won its promotion last), "paired" '
            '(the library), "net" (the trained network), "paired-faithful", "original" or "bicubic" (no learning).'))
    library_size: int = field(default=8000, metadata=field_doc("Number of HR/LR patch pairs kept in the learned library (>= 10)."))
    patch_size: int | None = field(default=None, metadata=field_doc(
        "Patch edge in output pixels, odd and >= 3 (unset: 9, the paper's n).", 9))
    sigma_n: float | None = field(default=None, metadata=field_doc(
        "Filtering strength, 0.01 to 100 (relative to the measured noise for paired; unset: the method's default).", 1.0))

    def __post_init__(self) -> None:
        check_types(self, "model.")
        check_range("model.scale", 2 <= self.scale <= 8, "an integer from 2 to 8", self.scale)
        check_range("model.library_size", self.library_size >= 10, "an integer >= 10", self.library_size)
        if self.patch_size is not None:
            check_range("model.patch_size", self.patch_size >= 3 and self.patch_size % 2 == 1,
                         "an odd integer >= 3", self.patch_size)
        if self.sigma_n is not None:
            low, high = SIGMA_N_RANGE
            check_range("model.sigma_n", low <= self.sigma_n <= high, f"a number from {low:g} to {high:g}", self.sigma_n)


@dataclass(frozen=True)
class ServeConfig:
    """How enhanced frames are computed (ONNX Runtime).

    Attributes:
        providers: ONNX Runtime execution providers in order of preference, e.g.
            ``("CUDAExecutionProvider", "CPUExecutionProvider")``; None: the GPU if available, else the CPU.
        intra_op_threads: CPU threads per inference, >= 0; 0: ONNX Runtime's default (all cores).
        tile: largest tile edge, input (LR) pixels, >= 64; the tile actually used is derived per model and scale
            from ``max_memory_mb`` and may be smaller.
        halo: overlap added around each tile for a trained network whose ONNX manifest does not record its
            receptive radius (exported by a refscope before it did, or an external model), input pixels, >= 0 and
            < tile / 2; every other model -- networks exported now, the paired library, bicubic -- is tiled with
            its own exact receptive radius and alignment (:mod:`refscope.daemon.serve.served_model`).
        max_memory_mb: memory budget of everything the daemon and its trainer hold, MB (>= 1280 with the trainer,
            >= 800 without); tiles, the output queue and the largest frame served are derived from it
            (shares: README, "Memory").
        self_ensemble: passes of a served network over flipped and rotated copies of the frame, averaged
            (:mod:`refscope.models.self_ensemble`): 1, 2, 4 or 8; 0: the most that keep one frame within
            ``frame_budget_s``, from the time the network took on the previous frames. Either way no more than
            the network allows (its manifest's ``max_ensemble``: 1 for a network fine-tuned on the scan's own
            orientation, which flipped passes would undo).
        frame_budget_s: seconds one served frame may take for the network's passes when ``self_ensemble`` is 0
            (> 0).
        prior: before anything is learned from the session, serve the pretrained EM prior shipped for the scale
            (:mod:`refscope.daemon.learn.prior_store`; model ``"prior"`` v0) instead of bicubic, until a library,
            network or safe baseline beats it on a reference's held-out area. Off, or no prior for the scale
            (``REFSCOPE_PRIORS=none``): bicubic.
        safe_blend: pull every output of the library or the network toward the safe baseline (a blur of bicubic
            chosen on each reference's held-out area) where the frame is unlike every reference
            (:mod:`refscope.models.safe_blend`).
        safe_blend_start, safe_blend_stop: library support ratios ``q / q_ref`` at which the hand-over to the
            baseline starts and is complete (0 < start < stop).
        safe_blend_rho_start, safe_blend_rho_stop: the same for the local data consistency ρ of the output (its
            departure from its own LR input over the LR noise, 8 x 8 LR px or the support grid's spacing).
    """

    SECTION: ClassVar[str] = "serve"

    providers: tuple[str, ...] | None = field(default=None, metadata=field_doc(
        "ONNX Runtime execution providers in order of preference (unset: the GPU if available, else the CPU).",
        ("CUDAExecutionProvider", "CPUExecutionProvider")))
    intra_op_threads: int = field(default=0, metadata=field_doc("CPU threads per inference; 0: ONNX Runtime's default (all cores)."))
    tile: int = field(default=1024, metadata=field_doc("Tile edge in input pixels; larger frames are enhanced tile by tile (>= 64)."))
    halo: int = field(default=32, metadata=field_doc("Overlap around each tile in input pixels (>= 0, less than tile / 2)."))
    max_memory_mb: int = field(default=1500, metadata=field_doc(
        "Memory budget of the daemon and its trainer together, MB; tile sizes, the output queue and the largest "
        "frame served are derived from it."))
    self_ensemble: int = field(default=0, metadata=field_doc(
        "Passes of a served network over flipped and rotated copies of each frame, averaged (1, 2, 4 or 8); "
        "0: as many as keep a frame within frame_budget_s. Never more than the network allows (1 for one "
        "fine-tuned on the scan's own orientation)."))
    frame_budget_s: float = field(default=0.5, metadata=field_doc(
        "Seconds the network's passes may take per frame when self_ensemble is 0 (> 0)."))
    prior: bool = field(default=True, metadata=field_doc(
        "Before anything is learned from the session, serve the pretrained EM prior shipped for the scale instead "
        "of bicubic, until a library, network or safe baseline beats it on a reference's held-out area."))
    safe_blend: bool = field(default=True, metadata=field_doc(
        "Pull the output toward the safe baseline (a tuned blur of bicubic) where the frame is unlike every "
        "reference (library support ratio above safe_blend_start)."))
    safe_blend_start: float = field(default=2.0, metadata=field_doc(
        "Library support ratio q / q_ref up to which the model serves alone (> 0)."))
    safe_blend_stop: float = field(default=6.0, metadata=field_doc(
        "Library support ratio q / q_ref from which the safe baseline serves alone (> safe_blend_start)."))
    safe_blend_rho_start: float = field(default=4.0, metadata=field_doc(
        "Local data consistency (output vs its own LR input, in LR noise units) up to which the model serves "
        "alone (> 0)."))
    safe_blend_rho_stop: float = field(default=6.0, metadata=field_doc(
        "Local data consistency from which the safe baseline serves alone (> safe_blend_rho_start)."))

    def __post_init__(self) -> None:
        check_types(self, "serve.")
        if self.providers is not None:
            check_range("serve.providers", len(self.providers) > 0 and len(set(self.providers)) == len(self.providers),
                         "a non-empty list of distinct provider names", list(self.providers))
        check_range("serve.intra_op_threads", self.intra_op_threads >= 0, "an integer >= 0", self.intra_op_threads)
        check_range("serve.tile", self.tile >= 64, "an integer >= 64", self.tile)
        check_range("serve.halo", 0 <= self.halo and 2 * self.halo < self.tile,
                     f"an integer >= 0 and less than tile / 2 = {self.tile / 2:g}", self.halo)
        check_range("serve.max_memory_mb", 600 <= self.max_memory_mb <= 1 << 20,
                     "an integer from 600 to 1048576 (MB)", self.max_memory_mb)
        check_range("serve.self_ensemble", self.self_ensemble in (0, *ENSEMBLE_SIZES),
                     f"0 (automatic) or one of {', '.join(map(str, ENSEMBLE_SIZES))}", self.self_ensemble)
        check_range("serve.frame_budget_s", math.isfinite(self.frame_budget_s) and self.frame_budget_s > 0,
                     "a number of seconds > 0", self.frame_budget_s)
        check_range("serve.safe_blend_start", math.isfinite(self.safe_blend_start) and self.safe_blend_start > 0,
                     "a number > 0", self.safe_blend_start)
        check_range("serve.safe_blend_stop", math.isfinite(self.safe_blend_stop)
                     and self.safe_blend_stop > self.safe_blend_start,
                     f"a number > serve.safe_blend_start = {self.safe_blend_start:g}", self.safe_blend_stop)
        check_range("serve.safe_blend_rho_start",
                     math.isfinite(self.safe_blend_rho_start) and self.safe_blend_rho_start > 0, "a number > 0",
                     self.safe_blend_rho_start)
        check_range("serve.safe_blend_rho_stop", math.isfinite(self.safe_blend_rho_stop)
                     and self.safe_blend_rho_stop > self.safe_blend_rho_start,
                     f"a number > serve.safe_blend_rho_start = {self.safe_blend_rho_start:g}",
                     self.safe_blend_rho_stop)


@dataclass(frozen=True)
class PublishConfig:
    """Where enhanced frames go.

    Attributes:
        out_dir: folder for enhanced TIFFs (``<stem>_x<S>.tif``); None: publish on ``pub_endpoint`` only.
        pub_endpoint: endpoint of the PUB socket streaming enhanced frames (lossy: viewers get the newest).
        pub_hwm: frames queued per viewer before new ones are dropped (>= 1).
        output_queue_limit: enhanced frames waiting to be written to ``out_dir`` before ingest is held back
            (>= 1; a frame is dropped, counted and logged only if the queue stays full).
        write_confidence: also write ``<stem>_x<S>_confidence.tif`` beside each enhanced frame.
        stream_raw: also publish each raw LR frame (role ``"lr"``) on ``pub_endpoint``, just before its enhancement.
        stream_confidence: also publish each confidence map (role ``"confidence"``) just after its enhancement.
    """

    SECTION: ClassVar[str] = "publish"

    out_dir: Path | None = field(default=None, metadata=field_doc(
        "Folder for enhanced TIFFs <stem>_x<S>.tif; must not be inside ingest.watch (unset: stream only).",
        "/data/sem/enhanced"))
    pub_endpoint: str = field(default="tcp://127.0.0.1:5561", metadata=field_doc(
        "ZMQ PUB endpoint streaming enhanced frames to viewers (lossy: viewers always get the newest frame)."))
    pub_hwm: int = field(default=4, metadata=field_doc("Frames queued per viewer before new ones are dropped (>= 1)."))
    output_queue_limit: int = field(default=64, metadata=field_doc(
        "Enhanced frames waiting to be written to out_dir; beyond this the pipeline waits, then drops (>= 1)."))
    write_confidence: bool = field(default=False, metadata=field_doc(
        "Also write <stem>_x<S>_confidence.tif beside each enhanced frame."))
    stream_raw: bool = field(default=True, metadata=field_doc(
        'Also publish each raw LR frame (role "lr") on pub_endpoint, just before its enhanced frame.'))
    stream_confidence: bool = field(default=True, metadata=field_doc(
        'Also publish each confidence map (role "confidence", float32 in [0, 1]) just after its enhanced frame.'))

    def __post_init__(self) -> None:
        check_types(self, "publish.")
        check_endpoint("publish.pub_endpoint", self.pub_endpoint)
        check_range("publish.pub_hwm", self.pub_hwm >= 1, "an integer >= 1", self.pub_hwm)
        check_range("publish.output_queue_limit", self.output_queue_limit >= 1, "an integer >= 1", self.output_queue_limit)


@dataclass(frozen=True)
class ControlConfig:
    """The daemon's own sockets for the TUI and scripts.

    Attributes:
        endpoint: REP endpoint for commands (status, reference requests...).
        events_endpoint: PUB endpoint of JSON events (pair learned, model promoted...).
    """

    SECTION: ClassVar[str] = "control"

    endpoint: str = field(default="tcp://127.0.0.1:5560", metadata=field_doc("ZMQ REP endpoint for control commands (TUI, scripts)."))
    events_endpoint: str = field(default="tcp://127.0.0.1:5562", metadata=field_doc(
        "ZMQ PUB endpoint of JSON events (pair_learned, model_promoted, ...)."))

    def __post_init__(self) -> None:
        check_types(self, "control.")
        check_endpoint("control.endpoint", self.endpoint)
        check_endpoint("control.events_endpoint", self.events_endpoint)


HOOKS: tuple[str, ...] = ("log", "file", "zmq", "script")
"""How a reference request reaches the microscope (``monitor.hook``), see :mod:`refscope.daemon.service.reference_hooks`."""


@dataclass(frozen=True)
class MonitorConfig:
    """Quality drift of live frames, confidence maps and reference requests (see :mod:`refscope.daemon.service.monitor`).

    Each signal is raised when its value (the median over the last ``window`` frames) reaches ``*_on`` and
    cleared when it falls back to ``*_off`` (hysteresis: ``*_off < *_on``). The held-out score works the other
    way round (low is bad): raised at or below ``held_out_on_db``, cleared at or above ``held_out_off_db``.

    Attributes:
        enabled: measure the signals and the confidence map of every enhanced frame (needs a learned model).
        window: frames whose median is compared with the thresholds (>= 1).
        coverage_on, coverage_off: library coverage, ratio of the frame's median support distance to the
            training frames' (1: like the training frames).
        texture_on, texture_off: distance of the frame's patch-feature statistics from the training frames'
            (0: alike; up to ~0.25 for other frames of the same real sample).
        intensity_on, intensity_off: shift of mean/5th/95th percentile, in training standard deviations.
        focus_on, focus_off: loss of sharpness, 0 (as sharp as the training frames) to 1.
        consistency_on, consistency_off: data consistency ρ of the enhanced frame: its output degraded by the
            forward model learned from the references, against its own LR frame, in units of the LR noise
            (1: the output explains its input up to the noise; :mod:`refscope.models.consistency`).
        held_out_on_db, held_out_off_db: the serving model's held-out ΔPSNR over bicubic on a new reference
            before learning from it, dB.
        request_on_drift: emit a reference request when a frame signal is raised.
        request_without_model: request a first reference as soon as frames arrive while no model serves.
        request_timeout_s: an unanswered request stops blocking new ones after this many seconds.
        request_interval_s: least time between two automatic requests, seconds.
        region_fraction: side of the requested region as a fraction of the LR field's (0.5: a quarter of it).
        confidence_stride: spacing of the measured patches on the output grid, px (>= 1).
        hook: how a request reaches the microscope: ``"log"``, ``"file"`` (a JSON file in ``hook_dir``),
            ``"zmq"`` (a PUSH message to ``hook_endpoint``) or ``"script"`` (``hook_command`` with the JSON on stdin).
        hook_dir, hook_endpoint, hook_command: the hook's target (required by its hook).
        hook_timeout_s: longest a script hook may run, seconds.
    """

    SECTION: ClassVar[str] = "monitor"

    enabled: bool = field(default=True, metadata=field_doc(
        "Measure quality drift and the confidence map of every enhanced frame (once a model is learned)."))
    window: int = field(default=3, metadata=field_doc("Frames whose median signal is compared with the thresholds (>= 1)."))
    coverage_on: float = field(default=1.5, metadata=field_doc(
        "Raise 'coverage' when the frame's median support distance reaches this multiple of the training frames'."))
    coverage_off: float = field(default=1.25, metadata=field_doc("Clear 'coverage' at or below this ratio (< coverage_on)."))
    texture_on: float = field(default=0.35, metadata=field_doc(
        "Raise 'texture' when the frame's patch statistics are this far from the training frames' (0: alike)."))
    texture_off: float = field(default=0.2, metadata=field_doc("Clear 'texture' at or below this distance (< texture_on)."))
    intensity_on: float = field(default=1.0, metadata=field_doc(
        "Raise 'intensity' when mean/percentiles shift by this many training standard deviations."))
    intensity_off: float = field(default=0.6, metadata=field_doc("Clear 'intensity' at or below this shift (< intensity_on)."))
    focus_on: float = field(default=0.35, metadata=field_doc(
        "Raise 'focus' when sharpness has dropped by this fraction of the training frames' (0 to 1)."))
    focus_off: float = field(default=0.2, metadata=field_doc("Clear 'focus' at or below this loss (< focus_on)."))
    consistency_on: float = field(default=2.0, metadata=field_doc(
        "Raise 'consistency' when the enhanced frame, degraded by the learned forward model, departs from its own "
        "LR frame by this many LR noise levels (1: within the noise)."))
    consistency_off: float = field(default=1.6, metadata=field_doc(
        "Clear 'consistency' at or below this ratio (< consistency_on)."))
    held_out_on_db: float = field(default=0.2, metadata=field_doc(
        "Raise 'held_out' when the serving model gains at most this many dB over bicubic on a new reference."))
    held_out_off_db: float = field(default=0.4, metadata=field_doc(
        "Clear 'held_out' when the serving model gains at least this many dB (> held_out_on_db)."))
    request_on_drift: bool = field(default=True, metadata=field_doc("Request an HR reference when a frame signal is raised."))
    request_without_model: bool = field(default=True, metadata=field_doc(
        "Request a first HR reference as soon as LR frames arrive while no model is serving."))
    request_timeout_s: float = field(default=120.0, metadata=field_doc(
        "Seconds after which an unanswered request no longer blocks new ones (> 0)."))
    request_interval_s: float = field(default=10.0, metadata=field_doc(
        "Least seconds between two automatic reference requests (>= 0)."))
    region_fraction: float = field(default=0.5, metadata=field_doc(
        "Side of the requested region as a fraction of the LR field's side (0.5: a quarter of its area)."))
    confidence_stride: int = field(default=6, metadata=field_doc(
        "Spacing of the patches measured for the confidence map, output pixels (>= 1)."))
    hook: Literal["log", "file", "zmq", "script"] = field(default="log", metadata=field_doc(
        'How a reference request reaches the microscope: "log", "file" (JSON in hook_dir), "zmq" (PUSH to '
        'hook_endpoint) or "script" (hook_command, JSON on stdin).'))
    hook_dir: Path | None = field(default=None, metadata=field_doc(
        'Folder receiving request-<id>.json files (hook = "file"); not inside ingest.watch.', "/data/sem/requests"))
    hook_endpoint: str | None = field(default=None, metadata=field_doc(
        'ZMQ endpoint the request is PUSHed to (hook = "zmq"; refscope connects).', "tcp://127.0.0.1:5570"))
    hook_command: tuple[str, ...] | None = field(default=None, metadata=field_doc(
        'Command run with the request JSON on stdin (hook = "script").', ("/opt/sem/request_reference.sh",)))
    hook_timeout_s: float = field(default=30.0, metadata=field_doc("Longest a script hook may run, seconds (> 0)."))

    def __post_init__(self) -> None:
        check_types(self, "monitor.")
        check_range("monitor.window", self.window >= 1, "an integer >= 1", self.window)
        for name in ("coverage", "texture", "intensity", "focus", "consistency"):
            on, off = getattr(self, f"{name}_on"), getattr(self, f"{name}_off")
            check_range(f"monitor.{name}_on", on > 0, "a number > 0", on)
            check_range(f"monitor.{name}_off", 0 <= off < on, f"a number >= 0 and below {name}_on = {on:g}", off)
        check_range("monitor.held_out_off_db", self.held_out_off_db > self.held_out_on_db,
                     f"above held_out_on_db = {self.held_out_on_db:g}", self.held_out_off_db)
        check_range("monitor.request_timeout_s", self.request_timeout_s > 0, "a number of seconds > 0",
                     self.request_timeout_s)
        check_range("monitor.request_interval_s", self.request_interval_s >= 0, "a number of seconds >= 0",
                     self.request_interval_s)
        check_range("monitor.region_fraction", 0 < self.region_fraction <= 1, "a fraction in (0, 1]",
                     self.region_fraction)
        check_range("monitor.confidence_stride", self.confidence_stride >= 1, "an integer >= 1",
                     self.confidence_stride)
        check_range("monitor.hook_timeout_s", self.hook_timeout_s > 0, "a number of seconds > 0", self.hook_timeout_s)
        check_endpoint("monitor.hook_endpoint", self.hook_endpoint)
        needs = {"file": ("hook_dir", self.hook_dir), "zmq": ("hook_endpoint", self.hook_endpoint),
                 "script": ("hook_command", self.hook_command)}
        if self.hook in needs and needs[self.hook][1] is None:
            name = needs[self.hook][0]
            raise ConfigError(f"monitor.hook = {self.hook!r} needs monitor.{name}", key=f"monitor.{name}")


@dataclass(frozen=True)
class TrainerConfig:
    """The background trainer: a small network fine-tuned on the session's pairs in rounds (see :mod:`refscope.daemon.learn.trainer`).

    Attributes:
        enabled: train in the background once the first reference pair is learned.
        network: ``"auto"`` (the network served at the session's scale, today ``"fullres"``) or a registered
            network name (``"compact"``, ``"fullres"``, ``"emsr"``).
        strategy: ``"real-pairs"``, ``"noise-robust"`` or ``"synthetic"``.
        round_s: training time per round, seconds (validation and export come on top: a few seconds).
        bootstrap_fraction: share of the first round spent on LR-only training (later rounds warm-start).
        rounds_per_pair: rounds run after each new pair (more only when new pairs arrive).
        threads: PyTorch threads of the training process (>= 1); leave the other cores to serving.
        nice: niceness added to the training process (0..19), so serving keeps priority.
        idle_priority: train only on CPU time nothing else wants (Linux ``SCHED_IDLE``): serving and learning
            preempt the training process at once.
        pause_while_serving: stop the training process while a frame is served or waits to be (it trains in the
            gaps between frames).
        retry_s: pause after a failed round, seconds.
        margin_db: a network must beat the serving model and bicubic by more than this on held-out area, dB.
        prior: start the session's network from the pretrained EM prior shipped for its network and scale
            (:mod:`refscope.daemon.learn.prior_store`), fine-tuned with the checkpoint chosen on held-out reference area;
            off, or no prior for that scale: LR-only bootstrap then the pairs, as before.
        companion: in the round after each fine-tune of the network (``rounds_per_pair`` >= 2), train a second,
            smaller network from scratch on the same pairs and serve the two blended as one ONNX graph, the blend
            weight chosen on held-out reference area (:mod:`refscope.models.net_blend`); the promotion gate judges
            the blend like any candidate. Off: one network, as before.
        baseline_share: mix a share of the safe baseline (bicubic blurred by the σ tuned on held-out reference
            area) into every round's candidate, the share chosen on held-out reference area among 0, 0.1, 0.2 and
            0.3 (:func:`refscope.models.net_blend.choose_baseline_share`; 0: the networks alone). Off: the
            networks alone.
    """

    SECTION: ClassVar[str] = "trainer"

    enabled: bool = field(default=True, metadata=field_doc(
        "Fine-tune a network on the session's pairs in a background process (promoted only when it wins)."))
    network: Literal["auto", "compact", "fullres", "emsr"] = field(default="auto", metadata=field_doc(
        'Network to train: "auto" (the network served at the scale, today fullres), "compact" (half-resolution body, '
        'fast on CPU-only PCs), "fullres" (full-resolution body, the best measured) or "emsr" (paper 004; give '
        'it a GPU).'))
    strategy: Literal["real-pairs", "noise-robust", "synthetic"] = field(default="real-pairs", metadata=field_doc(
        'Fine-tuning strategy: "real-pairs" (l1 on the physical pairs), "noise-robust" (eq. 16 of paper 004) or '
        '"synthetic" (HR degraded to LR).'))
    round_s: float = field(default=120.0, metadata=field_doc(
        "Training seconds per round (> 0); validation and ONNX export add a few seconds."))
    bootstrap_fraction: float = field(default=0.3, metadata=field_doc(
        "Share of the first round spent on LR-only multi-scale training (0 to 1); later rounds warm-start."))
    rounds_per_pair: int = field(default=2, metadata=field_doc(
        "Rounds run after each newly learned pair (>= 1); training pauses until the next pair."))
    threads: int = field(default=1, metadata=field_doc(
        "PyTorch threads of the training process (>= 1); the other cores stay with serving."))
    nice: int = field(default=10, metadata=field_doc("Niceness added to the training process (0 to 19)."))
    idle_priority: bool = field(default=True, metadata=field_doc(
        "Train only on CPU time nothing else wants (Linux SCHED_IDLE): serving and learning preempt training at once."))
    pause_while_serving: bool = field(default=True, metadata=field_doc(
        "Stop the training process while a frame is served or waits to be; it trains in the gaps between frames."))
    retry_s: float = field(default=30.0, metadata=field_doc("Pause after a failed round, seconds (>= 0)."))
    margin_db: float = field(default=0.0, metadata=field_doc(
        "A network is promoted only if it beats the serving model and bicubic by more than this many dB (>= 0)."))
    prior: bool = field(default=True, metadata=field_doc(
        "Start the network from the pretrained EM prior shipped for its network and scale (fine-tuned, best "
        "checkpoint on held-out reference area); false: LR-only bootstrap then the pairs."))
    companion: bool = field(default=True, metadata=field_doc(
        "Train a second, smaller network from scratch in the round after each fine-tune and serve both blended "
        "(weight chosen on held-out reference area) where that wins; false: one network."))
    baseline_share: bool = field(default=True, metadata=field_doc(
        "Mix a share (0 to 0.3, chosen on held-out reference area) of the safe baseline into each round's "
        "candidate, in the same ONNX graph; false: the networks alone."))

    def __post_init__(self) -> None:
        check_types(self, "trainer.")
        check_range("trainer.round_s", self.round_s > 0, "a number of seconds > 0", self.round_s)
        check_range("trainer.bootstrap_fraction", 0 <= self.bootstrap_fraction <= 1, "a fraction in [0, 1]",
                     self.bootstrap_fraction)
        check_range("trainer.rounds_per_pair", self.rounds_per_pair >= 1, "an integer >= 1", self.rounds_per_pair)
        check_range("trainer.threads", self.threads >= 1, "an integer >= 1", self.threads)
        check_range("trainer.nice", 0 <= self.nice <= 19, "an integer from 0 to 19", self.nice)
        check_range("trainer.retry_s", self.retry_s >= 0, "a number of seconds >= 0", self.retry_s)
        check_range("trainer.margin_db", self.margin_db >= 0, "a number of dB >= 0", self.margin_db)


@dataclass(frozen=True)
class SecurityConfig:
    """Who may connect: CURVE authentication and encryption of every endpoint (see :mod:`refscope.daemon.wire.curve`).

    With ``curve_dir`` set, every socket the daemon binds (control, events, stream, ZMQ ingest) -- loopback ones
    included -- accepts only clients whose public key is in ``authorized_clients_dir``; others get nothing.

    Attributes:
        curve_dir: folder with the daemon's key pair ``server.key`` / ``server.key_secret`` (``refscope keys
            generate DIR``); None: no CURVE (then every endpoint must be loopback, see ``allow_insecure_remote``).
        authorized_clients_dir: folder of the public keys (``*.key``) of the clients allowed to connect
            (``refscope keys authorize CLIENT.key --to DIR``); re-read when its content changes, so adding or
            removing a key takes effect at the next connection. Required with ``curve_dir``.
        allow_insecure_remote: allow binding non-loopback addresses without CURVE (anyone who can reach the port
            gets the frames and the control); logged as an error at every start.
    """

    SECTION: ClassVar[str] = "security"

    curve_dir: Path | None = field(default=None, metadata=field_doc(
        "Folder with the daemon's CURVE key pair server.key / server.key_secret, made by `refscope keys generate "
        "DIR` (unset: no CURVE; every endpoint must then bind 127.0.0.1).", "/etc/refscope/curve"))
    authorized_clients_dir: Path | None = field(default=None, metadata=field_doc(
        "Folder of the public keys (*.key) of clients allowed to connect, filled by `refscope keys authorize "
        "CLIENT.key --to DIR`; changes take effect at the next connection (required with curve_dir).",
        "/etc/refscope/authorized_clients"))
    allow_insecure_remote: bool = field(default=False, metadata=field_doc(
        "Allow endpoints reachable from other hosts WITHOUT CURVE: anyone who can reach them gets the frames and "
        "the control (logged as an error at every start)."))

    def __post_init__(self) -> None:
        check_types(self, "security.")
        if (self.curve_dir is None) != (self.authorized_clients_dir is None):
            given, missing = (("curve_dir", "authorized_clients_dir") if self.authorized_clients_dir is None
                              else ("authorized_clients_dir", "curve_dir"))
            raise ConfigError(
                f"security.{given} is set but security.{missing} is not: CURVE needs both the daemon's key folder "
                "(`refscope keys generate DIR`) and a folder of authorized client keys "
                "(`refscope keys authorize CLIENT.key --to DIR`)", key=f"security.{missing}")
        for name in ("curve_dir", "authorized_clients_dir"):
            path = getattr(self, name)
            if path is not None and path.exists() and not path.is_dir():
                raise ConfigError(f"security.{name} ({path}) exists and is not a folder", key=f"security.{name}")
        if self.curve_dir is not None and self.authorized_clients_dir is not None:
            if self.curve_dir.resolve() == self.authorized_clients_dir.resolve():
                raise ConfigError(
                    f"security.authorized_clients_dir ({self.authorized_clients_dir}) is security.curve_dir: that "
                    "would authorize the daemon's own key; keep client keys in a folder of their own",
                    key="security.authorized_clients_dir")
            secret = self.curve_dir / f"{SERVER_NAME}{SECRET_SUFFIX}"
            if not secret.is_file():
                raise ConfigError(
                    f"security.curve_dir ({self.curve_dir}) has no {secret.name}: create the daemon's keys with "
                    f"`refscope keys generate {self.curve_dir}`", key="security.curve_dir")


@dataclass(frozen=True)
class FusionConfig:
    """Multi-frame fusion of the live LR frames before enhancement (see :mod:`refscope.daemon.serve.fusion_window`).

    The newest frames of one field are registered to the newest (shift, small rotation), tested for changed
    content (a moving object falls back to the newest frame there) and merged (``merge``); the fused frame is what
    the model serves and what references are paired with. Off by default: a moving stage gains nothing from it.

    Attributes:
        enabled: fuse every live frame with the recent frames of its field.
        auto_static_stage: fuse (even when ``enabled`` is false) while the frames' stage metadata says the stage
            did not move (frames without a stage position are then served alone).
        window: frames fused at most, the newest included (1 to 16).
        max_age_s: frames older than this (acquisition time before the newest frame's) are not fused, seconds.
        stage_tolerance_px: a stage position that differs from the previous frame's by more than this many LR
            pixels is a stage move: the window restarts with the new frame.
        max_memory_mb: the window's frames (float32) are held within this many MB; a frame too large for
            ``window`` copies is fused with fewer (at least one: served alone).
        publish_single: also write the single-frame enhancement of each fused frame (``<stem>_single``) beside
            the fused one in the output folder.
        merge: how the registered frames are merged (:class:`refscope.models.fusion.FusionConfig` ``merge``):
            ``"spectral"`` (per tile and frequency, the pairwise Wiener merge, a per-pixel test keeping a moving
            object the newest frame's) or ``"tiles"`` (whole tiles kept or left out by the residual test).
    """

    SECTION: ClassVar[str] = "fusion"

    enabled: bool = field(default=False, metadata=field_doc(
        "Fuse each live LR frame with the recent frames of its field (registered, changed regions left out) before "
        "enhancement; for a stage that holds still (off by default)."))
    auto_static_stage: bool = field(default=False, metadata=field_doc(
        "Fuse while the frames' stage metadata says the stage did not move, even with enabled = false."))
    window: int = field(default=4, metadata=field_doc("Frames fused at most, the newest included (1 to 16)."))
    max_age_s: float = field(default=10.0, metadata=field_doc(
        "Frames acquired more than this many seconds before the newest are not fused (> 0)."))
    stage_tolerance_px: float = field(default=0.5, metadata=field_doc(
        "A stage position differing from the previous frame's by more than this many LR pixels is a stage move: "
        "the window restarts (>= 0)."))
    max_memory_mb: float = field(default=64.0, metadata=field_doc(
        "Most memory the window's frames (float32 copies) may hold, MB (> 0); larger frames are fused with fewer."))
    publish_single: bool = field(default=False, metadata=field_doc(
        "Also write the single-frame enhancement (<stem>_single) beside each fused frame in the output folder."))
    merge: str = field(default="spectral", metadata=field_doc(
        "How registered frames are merged: \"spectral\" (per frequency, moving objects kept the newest frame's) or "
        "\"tiles\" (whole tiles by the residual test; it ghosted a moving object on some simulated series)."))

    def __post_init__(self) -> None:
        check_types(self, "fusion.")
        check_range("fusion.window", 1 <= self.window <= 16, "an integer from 1 to 16", self.window)
        check_range("fusion.max_age_s", self.max_age_s > 0, "a number of seconds > 0", self.max_age_s)
        check_range("fusion.stage_tolerance_px", self.stage_tolerance_px >= 0, "a number of LR pixels >= 0",
                    self.stage_tolerance_px)
        check_range("fusion.max_memory_mb", self.max_memory_mb > 0, "a number of MB > 0", self.max_memory_mb)
        check_range("fusion.merge", self.merge in FUSION_MERGES, f"one of {', '.join(map(repr, FUSION_MERGES))}",
                    self.merge)

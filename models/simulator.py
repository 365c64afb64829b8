"""Physics of a virtual SEM session: specimen areas, a field that drifts, contrast/focus changes, LR and HR scans.

Pure functions of their arguments (time included): the simulated microscope process
(:mod:`refscope.daemon.offline.simulate`) calls them on a clock; tests call them at chosen times.

Geometry. Each :class:`Area` is a clean specimen image (signal in [0, 1], e.g. from
:func:`~.synthetic.render_specimen`) whose top-left specimen pixel edge sits at stage position ``origin_m``
(x, y, metres); specimen pixels are ``specimen_nm`` nm. The stage position of a scan is the centre of its field;
stage x runs along image columns and stage y along image rows (no scan rotation). An LR frame samples its field
with ``lr_pixel_nm`` pixels; an HR reference scan samples ``hr_factor`` times finer.

The session (:class:`Session`) moves the field: the stage sits at the centre of area 0, drifts along a bounded
zig-zag (``drift_nm_per_s``, turning around before the field leaves the area), and at ``scene_change_s`` is moved
to area 1 (another kind of specimen). :class:`Event` entries change the contrast (gain, offset of the detector
signal) or the focus (extra probe blur) for a while.

Noise model per pixel: ``Poisson(dose * (gain * s + offset)) / dose + Normal(0, read_noise)`` with ``s`` the
probe-blurred specimen signal, plus a random shift of each scan line (line jitter), as
:func:`~.synthetic.scan`; frames are returned as uint16 (signal [0, 1] -> 0..65535).

STEM. :func:`stem_lattice` draws an atomic-resolution HAADF specimen (Gaussian atomic columns on a square
lattice, Z-contrast between two sublattices, a few vacancies); :func:`scan_stem` scans it as a STEM does: the
probe-blurred specimen is *point sampled* at each pixel centre (no pixel averaging: a coarse LR frame aliases
the lattice as a real undersampled STEM scan does), counts are Poisson in the dose (electrons per pixel), each
scan line is shifted (line jitter) and has its own gain and offset (scan noise: flyback and detector drift).
:func:`stem_pair` gives an LR frame and a finer HR scan of its centre from the same specimen.

Repeated frames. :func:`drift_series` scans one field again and again while it drifts slowly (sub-pixel steps
plus a random wander) and a bright disc moves over the specimen, with the LR noise model above; :func:`drift_truth`
gives the clean specimen of any of those fields on a finer grid (the truth multi-frame fusion is scored against).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from scipy import ndimage

from .degradations import add_poisson_gaussian
from .synthetic import render_specimen, scan

__all__ = ["Area", "Event", "Optics", "Session", "State", "make_areas", "specimen_from_image", "state_at",
           "scan_lr", "scan_hr", "stage_to_area", "StemOptics", "stem_lattice", "scan_stem", "stem_pair",
           "DriftSeries", "DriftFrames", "drift_series", "drift_truth"]


@dataclass(frozen=True, eq=False)
class Area:
    """One area of the specimen: ``image`` (Hs, Ws) float64 signal in [0, 1], ``origin_m`` stage (x, y) of its
    top-left corner, ``specimen_nm`` its pixel size, ``name`` (e.g. the specimen kind)."""

    image: np.ndarray
    origin_m: tuple[float, float]
    specimen_nm: float
    name: str

    @property
    def size_nm(self) -> tuple[float, float]:
        """(height, width) of the area, nm."""
        return (self.image.shape[0] * self.specimen_nm, self.image.shape[1] * self.specimen_nm)

    def centre_m(self) -> tuple[float, float]:
        """Stage (x, y) of the area's centre, metres."""
        h, w = self.size_nm
        return (self.origin_m[0] + w * 0.5e-9, self.origin_m[1] + h * 0.5e-9)


@dataclass(frozen=True)
class Event:
    """A temporary change: from ``start_s`` for ``duration_s`` seconds, ``kind`` ``"contrast"`` (detector
    ``gain`` and ``offset``) or ``"focus"`` (extra probe blur ``blur_px``, LR pixels, added in quadrature)."""

    kind: str
    start_s: float
    duration_s: float
    gain: float = 1.0
    offset: float = 0.0
    blur_px: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("contrast", "focus"):
            raise ValueError(f"event kind must be 'contrast' or 'focus', got {self.kind!r}")
        if not (self.duration_s > 0 and self.gain > 0 and self.blur_px >= 0):
            raise ValueError("an event needs duration_s > 0, gain > 0 and blur_px >= 0")


@dataclass(frozen=True)
class Optics:
    """Scan settings.

    Attributes:
        lr_shape: (H, W) of an LR frame, px.
        lr_pixel_nm: LR pixel size, nm.
        hr_factor: HR sampling relative to the LR (2: HR pixels are half as large).
        dose, hr_dose: electrons per unit signal per pixel of LR frames and HR references.
        read_noise: additive Gaussian noise, signal units.
        probe_sigma_px: probe standard deviation, LR px (HR scans: ``hr_probe_sigma_px`` HR px).
        hr_probe_sigma_px: probe standard deviation of HR scans, HR px.
        line_jitter_px: standard deviation of each line's shift, in the scan's own pixels.
    """

    lr_shape: tuple[int, int] = (256, 320)
    lr_pixel_nm: float = 10.0
    hr_factor: int = 2
    dose: float = 300.0
    hr_dose: float = 600.0
    read_noise: float = 0.01
    probe_sigma_px: float = 0.5
    hr_probe_sigma_px: float = 0.6
    line_jitter_px: float = 0.1

    def __post_init__(self) -> None:
        if min(self.lr_shape) < 16 or self.lr_pixel_nm <= 0 or self.hr_factor < 2:
            raise ValueError("optics need an LR frame of at least 16x16 px, lr_pixel_nm > 0 and hr_factor >= 2")
        if self.dose <= 0 or self.hr_dose <= 0 or self.read_noise < 0 or self.probe_sigma_px < 0:
            raise ValueError("doses must be > 0; read_noise and probe_sigma_px >= 0")


@dataclass(frozen=True)
class Session:
    """How the field moves and what changes over time (seconds from the session start).

    Attributes:
        drift_nm_per_s: stage drift speed along x and y (a bounded zig-zag), nm/s.
        scene_change_s: time the stage moves from area 0 to area 1 (None: never).
        events: contrast/focus changes.
        margin_lr_px: closest the field comes to an area's border, LR px.
    """

    drift_nm_per_s: tuple[float, float] = (3.0, 1.5)
    scene_change_s: float | None = 30.0
    events: tuple[Event, ...] = field(default_factory=tuple)
    margin_lr_px: float = 8.0


@dataclass(frozen=True)
class State:
    """The microscope at one moment: ``area`` index, stage ``stage_xy_m`` (field centre), detector ``gain`` and
    ``offset``, extra focus blur ``blur_px`` (LR px)."""

    area: int
    stage_xy_m: tuple[float, float]
    gain: float
    offset: float
    blur_px: float


def _zigzag(distance: float, span: float) -> float:
    """Position in [-span, span] after travelling ``distance`` from 0 back and forth (a triangle wave)."""
    if span <= 0:
        return 0.0
    period = 4.0 * span
    phase = (distance + span) % period
    return (phase if phase <= 2 * span else period - phase) - span


def state_at(t: float, areas: Sequence[Area], optics: Optics, session: Session) -> State:
    """The :class:`State` at ``t`` seconds into the session (pure)."""
    area = 1 if (session.scene_change_s is not None and t >= session.scene_change_s and len(areas) > 1) else 0
    since = t - session.scene_change_s if area == 1 else t
    a = areas[area]
    h_nm, w_nm = a.size_nm
    field_h, field_w = optics.lr_shape[0] * optics.lr_pixel_nm, optics.lr_shape[1] * optics.lr_pixel_nm
    margin = session.margin_lr_px * optics.lr_pixel_nm
    span_x = max(0.0, (w_nm - field_w) / 2 - margin)
    span_y = max(0.0, (h_nm - field_h) / 2 - margin)
    cx, cy = a.centre_m()
    x = cx + _zigzag(session.drift_nm_per_s[0] * since, span_x) * 1e-9
    y = cy + _zigzag(session.drift_nm_per_s[1] * since, span_y) * 1e-9
    gain, offset, blur = 1.0, 0.0, 0.0
    for event in session.events:
        if event.start_s <= t < event.start_s + event.duration_s:
            if event.kind == "contrast":
                gain, offset = gain * event.gain, offset + event.offset
            else:
                blur = math.hypot(blur, event.blur_px)
    return State(area, (x, y), gain, offset, blur)


def stage_to_area(stage_xy_m: Sequence[float], areas: Sequence[Area]) -> int | None:
    """Index of the area containing stage position (x, y), or None."""
    x, y = stage_xy_m
    for index, a in enumerate(areas):
        h_nm, w_nm = a.size_nm
        if 0 <= (x - a.origin_m[0]) * 1e9 < w_nm and 0 <= (y - a.origin_m[1]) * 1e9 < h_nm:
            return index
    return None


def _scan(a: Area, stage_xy_m: Sequence[float], shape: tuple[int, int], pixel_nm: float, probe_px: float,
          dose: float, state: State, optics: Optics, rng: np.random.Generator, jitter_px: float) -> np.ndarray:
    pixel = pixel_nm / a.specimen_nm  # specimen px per image px
    cx = (stage_xy_m[0] - a.origin_m[0]) * 1e9 / a.specimen_nm
    cy = (stage_xy_m[1] - a.origin_m[1]) * 1e9 / a.specimen_nm
    box = (cy - shape[0] * pixel / 2, cx - shape[1] * pixel / 2, shape[0], shape[1])
    clean = scan(a.image, field_box=box, pixel_size=pixel, probe_sigma_px=probe_px, dose=None, read_noise=0.0,
                 rng=rng, line_jitter_px=jitter_px)
    signal = np.clip(state.gain * clean + state.offset, 0.0, None)
    noisy = add_poisson_gaussian(signal, sigma=optics.read_noise, dose=dose, rng=rng)
    return np.rint(np.clip(noisy, 0.0, 1.0) * 65535.0).astype(np.uint16)


def scan_lr(areas: Sequence[Area], state: State, optics: Optics, rng: np.random.Generator) -> np.ndarray:
    """An LR frame (``optics.lr_shape``, uint16) of the field at ``state``."""
    a = areas[state.area]
    probe = math.hypot(optics.probe_sigma_px, state.blur_px)
    return _scan(a, state.stage_xy_m, optics.lr_shape, optics.lr_pixel_nm, probe, optics.dose, state, optics, rng,
                 optics.line_jitter_px)


def scan_hr(areas: Sequence[Area], state: State, optics: Optics, rng: np.random.Generator, *,
            centre_xy_m: Sequence[float], lr_box_shape: tuple[int, int]) -> np.ndarray:
    """An HR reference scan (uint16) centred on stage ``centre_xy_m``, covering ``lr_box_shape`` LR pixels at
    ``optics.hr_factor`` times the LR sampling: ``(factor * h, factor * w)`` pixels. The current contrast and
    focus apply (focus blur scaled to HR pixels). Raises ValueError when the centre is in no area."""
    index = stage_to_area(centre_xy_m, areas)
    if index is None:
        raise ValueError(f"stage position {tuple(centre_xy_m)} m lies outside every specimen area")
    f = optics.hr_factor
    shape = (int(lr_box_shape[0]) * f, int(lr_box_shape[1]) * f)
    probe = math.hypot(optics.hr_probe_sigma_px, state.blur_px * f)
    return _scan(areas[index], centre_xy_m, shape, optics.lr_pixel_nm / f, probe, optics.hr_dose, state, optics,
                 rng, 0.0)


def make_areas(kinds: Sequence[str], optics: Optics, *, rng: np.random.Generator, travel_lr_px: float = 48.0,
               specimen_per_hr_px: float = 2.0) -> list[Area]:
    """Render one area per specimen kind (:data:`~.synthetic.KINDS`), each the LR field plus ``travel_lr_px`` on
    every side, at ``specimen_per_hr_px`` specimen pixels per HR pixel; areas sit 1 mm apart along stage x."""
    spec_nm = optics.lr_pixel_nm / optics.hr_factor / specimen_per_hr_px
    per_lr = optics.lr_pixel_nm / spec_nm
    shape = (int(math.ceil((optics.lr_shape[0] + 2 * travel_lr_px) * per_lr)),
             int(math.ceil((optics.lr_shape[1] + 2 * travel_lr_px) * per_lr)))
    feature = 3.0 * specimen_per_hr_px  # particle radius ~ 1.5 LR px, as synthetic.make_pair
    return [Area(render_specimen(shape, rng=rng, kind=kind, feature_px=feature), (i * 1e-3, 0.0), spec_nm, kind)
            for i, kind in enumerate(kinds)]


def specimen_from_image(image: np.ndarray, optics: Optics, *, name: str = "image",
                        origin_m: tuple[float, float] = (0.0, 0.0)) -> Area:
    """An :class:`Area` from a user's (H, W) HR image: intensities mapped to [0, 1] (0.5-99.5 percentiles), its
    pixels taken as specimen pixels as large as fits the LR field plus margins, at most half an HR pixel.

    Raises ValueError when the image is too small to hold an LR field at least at HR sampling.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"a specimen image must be 2-D grayscale, got shape {img.shape}")
    low, high = np.percentile(img, [0.5, 99.5])
    if not high > low:
        raise ValueError("the specimen image is constant")
    signal = np.clip((img - low) / (high - low), 0.0, 1.0)
    h, w = optics.lr_shape
    per_lr = min(2.0 * optics.hr_factor, signal.shape[0] / (h + 32), signal.shape[1] / (w + 32))
    if per_lr < optics.hr_factor:
        raise ValueError(f"a specimen image of {signal.shape[1]}x{signal.shape[0]} px is too small for "
                         f"{w}x{h} px LR frames at x{optics.hr_factor} HR sampling; choose a smaller frame size")
    return Area(signal, origin_m, optics.lr_pixel_nm / per_lr, name)


# ------------------------------------------------------------------------------------------------------ STEM


@dataclass(frozen=True)
class StemOptics:
    """A STEM scan generator's settings (lengths in nm, SrTiO3-like defaults).

    Attributes:
        lr_shape: LR frame (rows, cols), pixels.
        lr_pixel_nm: LR pixel size, nm (0.05 nm: about 8 px per 0.39 nm lattice period).
        hr_factor: HR reference sampling, times finer than LR.
        lattice_nm: atomic column spacing, nm.
        column_sigma_nm: Gaussian width of one column's HAADF signal, nm.
        probe_sigma_nm: Gaussian probe standard deviation, nm.
        dose: electrons per pixel at signal 1 (Poisson); HR scans get ``hr_dose``.
        hr_dose: electrons per HR pixel at signal 1.
        line_jitter_px: standard deviation of each line's shift along x, image pixels.
        scan_noise: standard deviation of each line's relative gain (and, halved, offset).
        specimen_nm: specimen raster pixel, nm (finer than any scan).
    """

    lr_shape: tuple[int, int] = (128, 128)
    lr_pixel_nm: float = 0.05
    hr_factor: int = 2
    lattice_nm: float = 0.3905
    column_sigma_nm: float = 0.035
    probe_sigma_nm: float = 0.04
    dose: float = 100.0
    hr_dose: float = 400.0
    line_jitter_px: float = 0.15
    scan_noise: float = 0.02
    specimen_nm: float = 0.0125

    def __post_init__(self) -> None:
        positive = ("lr_pixel_nm", "lattice_nm", "column_sigma_nm", "dose", "hr_dose", "specimen_nm")
        if any(not getattr(self, name) > 0 for name in positive) or self.probe_sigma_nm < 0:
            raise ValueError(f"StemOptics: {', '.join(positive)} must be > 0 and probe_sigma_nm >= 0")
        if self.hr_factor < 1 or self.line_jitter_px < 0 or self.scan_noise < 0 or min(self.lr_shape) < 1:
            raise ValueError("StemOptics: hr_factor >= 1, line_jitter_px >= 0, scan_noise >= 0, lr_shape >= 1 px")


def stem_lattice(size_nm: tuple[float, float], optics: StemOptics, *, rng: np.random.Generator,
                 rotation_deg: float = 7.0, vacancy_fraction: float = 0.02) -> np.ndarray:
    """A clean HAADF specimen of ``size_nm`` (rows, cols in nm) on the ``optics.specimen_nm`` raster, signal in
    [0, 1]: Gaussian columns (``column_sigma_nm``) on a square lattice (``lattice_nm``) rotated by
    ``rotation_deg``, the body-centre sublattice at 0.45 of the corner one (Z-contrast), ``vacancy_fraction`` of
    the columns missing, on a weak amorphous background."""
    rows, cols = (int(round(v / optics.specimen_nm)) for v in size_nm)
    if rows < 4 or cols < 4:
        raise ValueError(f"specimen of {size_nm} nm is too small for {optics.specimen_nm} nm pixels")
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64) * optics.specimen_nm
    theta = math.radians(rotation_deg)
    u = (x * math.cos(theta) + y * math.sin(theta)) / optics.lattice_nm  # lattice coordinates
    v = (-x * math.sin(theta) + y * math.cos(theta)) / optics.lattice_nm
    width = 2.0 * (optics.column_sigma_nm / optics.lattice_nm) ** 2
    signal = np.zeros((rows, cols))
    for shift, weight in ((0.0, 1.0), (0.5, 0.45)):  # corner columns, body-centre columns
        du, dv = u - shift - np.round(u - shift), v - shift - np.round(v - shift)
        columns = np.exp(-(du ** 2 + dv ** 2) / width)
        cell = (np.round(u - shift).astype(np.int64) * 7919 + np.round(v - shift).astype(np.int64)) % 10007
        missing = rng.random(10007) < vacancy_fraction
        keep = ~missing[cell]
        signal += weight * columns * keep
    background = ndimage.gaussian_filter(rng.random((rows, cols)), 0.1 / optics.specimen_nm)
    signal = 0.05 + 0.85 * signal + 0.1 * (background - background.min()) / max(np.ptp(background), 1e-12)
    return np.clip(signal, 0.0, 1.0)


def scan_stem(specimen: np.ndarray, optics: StemOptics, *, centre_nm: tuple[float, float], shape: tuple[int, int],
              pixel_nm: float, dose: float | None, rng: np.random.Generator | None, jitter: bool = True,
              scan_noise: bool = True) -> np.ndarray:
    """A STEM scan (rows, cols float64, signal units) of ``specimen`` (from :func:`stem_lattice`) centred on
    ``centre_nm`` (y, x) with ``pixel_nm`` pixels: the probe-blurred specimen point sampled at each pixel centre
    (:func:`~.synthetic.scan`, bilinear between specimen pixels, no averaging over the pixel), Poisson counts in
    ``dose`` (None: noise-free), each line shifted by ``optics.line_jitter_px`` and given its own gain/offset
    (``optics.scan_noise``) unless ``jitter`` / ``scan_noise`` is False."""
    step = pixel_nm / optics.specimen_nm  # specimen px per image px
    box = (centre_nm[0] / optics.specimen_nm - shape[0] * step / 2, centre_nm[1] / optics.specimen_nm - shape[1] * step / 2,
           int(shape[0]), int(shape[1]))
    image = scan(specimen, field_box=box, pixel_size=step, probe_sigma_px=optics.probe_sigma_nm / pixel_nm,
                 dose=None, read_noise=0.0, rng=rng, line_jitter_px=optics.line_jitter_px if jitter else 0.0)
    if scan_noise and optics.scan_noise > 0:
        if rng is None:
            raise ValueError("rng is required for scan noise")
        gain = 1.0 + rng.normal(0.0, optics.scan_noise, (shape[0], 1))
        offset = rng.normal(0.0, optics.scan_noise / 2, (shape[0], 1))
        image = np.clip(image * gain + offset, 0.0, None)
    if dose is not None:
        if rng is None:
            raise ValueError("rng is required for shot noise")
        image = add_poisson_gaussian(image, sigma=0.0, dose=dose, rng=rng)
    return image


def stem_pair(optics: StemOptics, *, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(LR frame, HR reference, LR pixel nm, HR pixel nm): an LR STEM frame of ``optics.lr_shape`` and an HR scan of
    its central half at ``hr_factor`` times finer sampling, both point sampled from one lattice with their own
    dose, jitter and scan noise; uint16 (signal [0, 1] -> 0..65535)."""
    rows, cols = optics.lr_shape
    size = (rows * optics.lr_pixel_nm * 1.2, cols * optics.lr_pixel_nm * 1.2)
    specimen = stem_lattice(size, optics, rng=rng)
    centre = (size[0] / 2, size[1] / 2)
    hr_pixel = optics.lr_pixel_nm / optics.hr_factor
    lr = scan_stem(specimen, optics, centre_nm=centre, shape=optics.lr_shape, pixel_nm=optics.lr_pixel_nm,
                   dose=optics.dose, rng=rng)
    hr = scan_stem(specimen, optics, centre_nm=centre, shape=(rows // 2 * optics.hr_factor, cols // 2 * optics.hr_factor),
                   pixel_nm=hr_pixel, dose=optics.hr_dose, rng=rng)
    as_counts = [np.rint(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint16) for image in (lr, hr)]
    return as_counts[0], as_counts[1], optics.lr_pixel_nm, hr_pixel


# ------------------------------------------------------------------------------------------- repeated frames


@dataclass(frozen=True)
class DriftSeries:
    """Repeated LR frames of one field: slow sub-pixel drift and a moving object (for multi-frame fusion).

    Attributes:
        n_frames: number of frames (>= 1).
        drift_px: mean displacement of the field per frame (y, x), LR px (slow: a fraction of a pixel).
        wander_px: standard deviation of a random step added to the drift per frame and axis, LR px (>= 0).
        object_radius_px: radius of a bright disc that moves over the specimen, LR px (0: no object).
        object_step_px: its displacement on the specimen per frame (y, x), LR px.
        object_contrast: signal the disc adds (the specimen signal is in [0, 1]; the sum is clipped to 1).
        object_start: where the disc starts, as a fraction (y, x) of frame 0's field (0.5, 0.5: its centre).
    """

    n_frames: int = 8
    drift_px: tuple[float, float] = (0.29, -0.37)
    wander_px: float = 0.05
    object_radius_px: float = 5.0
    object_step_px: tuple[float, float] = (1.5, 2.5)
    object_contrast: float = 0.4
    object_start: tuple[float, float] = (0.5, 0.5)

    def __post_init__(self) -> None:
        if self.n_frames < 1 or self.wander_px < 0 or self.object_radius_px < 0:
            raise ValueError("DriftSeries needs n_frames >= 1, wander_px >= 0 and object_radius_px >= 0")


@dataclass(frozen=True, eq=False)
class DriftFrames:
    """What :func:`drift_series` scanned.

    Attributes:
        frames: N uint16 (H, W) LR frames, oldest first.
        field_yx: (N, 2) top-left corner of each frame's field relative to frame 0's, LR px: the content of
            frame ``k`` at pixel ``u`` is the content of frame 0 at ``u + field_yx[k]``.
        object_yx: (N, 2) centre of the moving object in each frame's own LR pixel-edge coordinates.
        origin_px: (y, x) frame 0's field top-left corner, specimen px.
    """

    frames: tuple[np.ndarray, ...]
    field_yx: np.ndarray
    object_yx: np.ndarray
    origin_px: tuple[float, float]


def _with_object(image: np.ndarray, centre_px: tuple[float, float], radius_px: float, contrast: float) -> np.ndarray:
    """A copy of ``image`` with a soft-edged disc (``radius_px`` specimen px, edge ~1 px wide) of ``contrast``
    added at ``centre_px`` (y, x specimen pixel-edge coordinates), clipped to [0, 1]."""
    out = image.copy()
    if radius_px <= 0 or contrast == 0:
        return out
    cy, cx = centre_px
    pad = radius_px + 3
    y0, y1 = max(int(cy - pad), 0), min(int(math.ceil(cy + pad)), image.shape[0])
    x0, x1 = max(int(cx - pad), 0), min(int(math.ceil(cx + pad)), image.shape[1])
    if y1 <= y0 or x1 <= x0:
        return out
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
    disc = np.clip(radius_px + 0.5 - np.hypot(yy - cy, xx - cx), 0.0, 1.0)
    out[y0:y1, x0:x1] = np.clip(out[y0:y1, x0:x1] + contrast * disc, 0.0, 1.0)
    return out


def drift_series(area: Area, optics: Optics, series: DriftSeries, *, rng: np.random.Generator) -> DriftFrames:
    """Scan ``series.n_frames`` LR frames of the field at the centre of ``area`` while it drifts.

    Frame ``k``'s field is displaced by ``field_yx[k] = Σ_{j<=k, j>0} (drift_px + N(0, wander_px²))`` LR px
    from frame 0's; a disc (the moving object) starts at ``object_start`` of the field and moves by ``object_step_px`` per
    frame over the specimen. Each frame has the session's noise model (Poisson dose, read noise, line jitter,
    probe blur; :func:`scan_lr`'s), so consecutive frames differ by drift, noise and the object only.
    """
    per_lr = optics.lr_pixel_nm / area.specimen_nm  # specimen px per LR px
    h, w = optics.lr_shape
    steps = np.asarray(series.drift_px, dtype=np.float64) + rng.normal(0.0, series.wander_px, (series.n_frames, 2))
    steps[0] = 0.0
    field = np.cumsum(steps, axis=0)
    span = np.abs(field).max() + 2.0
    if (h + 2 * span) * per_lr > area.image.shape[0] or (w + 2 * span) * per_lr > area.image.shape[1]:
        raise ValueError(f"the field drifts by up to {span:.1f} LR px, beyond the {area.image.shape} px specimen area")
    origin = ((area.image.shape[0] - h * per_lr) / 2.0, (area.image.shape[1] - w * per_lr) / 2.0)
    start = np.array([origin[0] + h * per_lr * series.object_start[0],
                      origin[1] + w * per_lr * series.object_start[1]])  # object centre, specimen px
    frames, objects = [], []
    state = State(0, (0.0, 0.0), 1.0, 0.0, 0.0)
    for k in range(series.n_frames):
        centre_obj = start + k * np.asarray(series.object_step_px) * per_lr
        spec = _with_object(area.image, (float(centre_obj[0]), float(centre_obj[1])),
                            series.object_radius_px * per_lr, series.object_contrast)
        top = np.array(origin) + field[k] * per_lr
        stage = (area.origin_m[0] + (top[1] + w * per_lr / 2.0) * area.specimen_nm * 1e-9,
                 area.origin_m[1] + (top[0] + h * per_lr / 2.0) * area.specimen_nm * 1e-9)
        view = Area(spec, area.origin_m, area.specimen_nm, area.name)
        frames.append(_scan(view, stage, optics.lr_shape, optics.lr_pixel_nm, optics.probe_sigma_px, optics.dose,
                            state, optics, rng, optics.line_jitter_px))
        objects.append((centre_obj - top) / per_lr)
    return DriftFrames(tuple(frames), field, np.array(objects), (float(origin[0]), float(origin[1])))


def drift_truth(area: Area, optics: Optics, series: DriftSeries, drift: DriftFrames, index: int, *,
                scale: int) -> np.ndarray:
    """The clean specimen (float64 signal in [0, 1], no noise, no jitter) of frame ``index``'s field on its grid
    refined ``scale`` times ((S·H, S·W)), as a perfect HR reference would show it: moving object at its place,
    probe ``optics.hr_probe_sigma_px`` fine px. What the benchmark scores super-resolved frames against."""
    if not 0 <= index < len(drift.frames) or scale < 1:
        raise ValueError(f"index must be in [0, {len(drift.frames)}) and scale >= 1")
    per_lr = optics.lr_pixel_nm / area.specimen_nm
    h, w = optics.lr_shape
    centre_obj = drift.object_yx[index] + drift.field_yx[index]  # LR px relative to frame 0's field
    spec = _with_object(area.image, (drift.origin_px[0] + centre_obj[0] * per_lr,
                                     drift.origin_px[1] + centre_obj[1] * per_lr),
                        series.object_radius_px * per_lr, series.object_contrast)
    top = np.array(drift.origin_px) + drift.field_yx[index] * per_lr
    return scan(spec, field_box=(float(top[0]), float(top[1]), h * scale, w * scale), pixel_size=per_lr / scale,
                probe_sigma_px=optics.hr_probe_sigma_px, dose=None, read_noise=0.0, rng=None)

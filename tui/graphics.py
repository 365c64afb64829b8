"""Real pixels for the operator: which terminal image protocol to use, the picture of a frame at the pane's pixel
resolution, and a scale bar from the pixel size (pure functions, array in, picture out; no textual widgets).

Protocols (:data:`GRAPHICS`): ``"kitty"`` (Kitty's terminal graphics protocol), ``"sixel"`` (Sixel: xterm, foot,
WezTerm, Konsole, mlterm, iTerm2 >= 3.5, Windows Terminal) and ``"halfblock"`` (two pixels per character cell:
any terminal, plain SSH, a pipe). :func:`detect_graphics` asks the terminal itself, through ``textual-image``
(LGPL-3.0-or-later, used unmodified as a library), before the app starts -- once the app runs, the terminal's
answers would go to textual. ``REFSCOPE_TUI_GRAPHICS=kitty|sixel|halfblock`` overrides it.
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from .render import Window, palette_rgb, picture_window, quantize

__all__ = ["GRAPHICS", "ENV_VAR", "detect_graphics", "cell_pixels", "frame_picture", "scale_bar", "format_length"]

GRAPHICS = ("kitty", "sixel", "halfblock")
ENV_VAR = "REFSCOPE_TUI_GRAPHICS"
DEFAULT_CELL_PX = (20, 10)
"""(height, width) of a character cell in pixels when the terminal does not say (textual-image's default)."""


def detect_graphics(env: Mapping[str, str] | None = None, *, tty: bool | None = None) -> str:
    """The image protocol this terminal speaks (one of :data:`GRAPHICS`); call before the app starts.

    ``$REFSCOPE_TUI_GRAPHICS`` wins (ValueError for another value); not a terminal -> ``"halfblock"``; otherwise the
    terminal is queried (Sixel first, then Kitty's protocol, as textual-image orders them): a terminal that answers
    neither -- most over plain SSH -- gets half blocks.
    """
    env = os.environ if env is None else env
    forced = env.get(ENV_VAR, "").strip().lower()
    if forced and forced != "auto":
        if forced not in GRAPHICS:
            raise ValueError(f"{ENV_VAR}: one of {', '.join(GRAPHICS)} or auto, got {forced!r}")
        return forced
    if tty is None:
        tty = bool(sys.__stdout__ and sys.__stdout__.isatty() and sys.__stdin__ and sys.__stdin__.isatty())
    if not tty:
        return "halfblock"
    try:
        from textual_image.renderable import Image, SixelImage, TGPImage  # queries the terminal on import
    except Exception:  # noqa: BLE001 - no answer, no library: the half blocks always work
        return "halfblock"
    return {SixelImage: "sixel", TGPImage: "kitty"}.get(Image, "halfblock")


def cell_pixels() -> tuple[int, int]:
    """(height, width) of one character cell in screen pixels, as the terminal reported it at start-up."""
    try:
        from textual_image._terminal import get_cell_size

        size = get_cell_size()
        return (int(size.height) or DEFAULT_CELL_PX[0], int(size.width) or DEFAULT_CELL_PX[1])
    except Exception:  # noqa: BLE001
        return DEFAULT_CELL_PX


def format_length(nm: float) -> str:
    """A length in nm as an operator reads it (``500 nm``, ``2 µm``, ``50 pm``)."""
    if nm >= 1e6:
        return f"{nm / 1e6:g} mm"
    if nm >= 1e3:
        return f"{nm / 1e3:g} µm"
    if nm >= 1:
        return f"{nm:g} nm"
    return f"{nm * 1e3:g} pm"


def scale_bar(nm_per_px: float, width_px: int, *, fraction: float = 0.2) -> tuple[int, str] | None:
    """A round scale bar (1, 2 or 5 x 10^k nm) about ``fraction`` of ``width_px`` long: (length in pixels, label);
    None without a usable pixel size."""
    if not (nm_per_px and math.isfinite(nm_per_px) and nm_per_px > 0 and width_px >= 4):
        return None
    target = nm_per_px * width_px * fraction
    power = 10.0 ** math.floor(math.log10(target))
    nice = max((m * power for m in (1, 2, 5) if m * power <= target), default=power)
    length = max(1, int(round(nice / nm_per_px)))
    return length, format_length(float(f"{nice:.3g}"))


def frame_picture(frame: np.ndarray, height_px: int, width_px: int, *, zoom: float = 1.0,
                  center: tuple[float, float] = (0.5, 0.5), limits: tuple[float, float] | None = None,
                  palette: str = "gray", pixel_size_nm: float | None = None) -> tuple[Any, Window, str | None]:
    """The picture of ``frame`` for a pane of ``height_px x width_px`` screen pixels: (PIL RGB image of exactly that
    size, the sampling used, the scale bar's label or None).

    Frame pixels land on screen pixels by nearest neighbour (``zoom`` 1: the whole frame fitted; at the 1:1 zoom one
    frame pixel is one screen pixel), contrast as the half blocks (1-99 percentiles of what is visible, or
    ``limits``). With ``pixel_size_nm`` (nm per frame pixel) a white scale bar with its length is drawn in the
    lower left corner.
    """
    from PIL import Image, ImageDraw, ImageFont

    data = np.asarray(frame)
    if data.ndim != 2:
        raise ValueError(f"frame_picture: frame must be 2-D (H, W), got shape {data.shape}")
    win = picture_window(data.shape, height_px, width_px, zoom=zoom, center=center)
    levels = 256
    q = quantize(data[win.rows[:, None], win.cols[None, :]], levels, limits)
    lut = np.asarray(palette_rgb(palette, levels), dtype=np.uint8)
    canvas = np.zeros((height_px, width_px, 3), np.uint8)
    canvas[win.pad_top:win.pad_top + q.shape[0], win.pad_left:win.pad_left + q.shape[1]] = lut[q]
    image = Image.fromarray(canvas, "RGB")
    label = None
    bar = scale_bar(pixel_size_nm / win.scale, min(width_px, q.shape[1])) if pixel_size_nm else None
    if bar is not None:
        length, label = bar
        draw = ImageDraw.Draw(image)
        text_px = max(11, height_px // 36)
        try:
            font: Any = ImageFont.load_default(size=text_px)  # Pillow's own scalable font
        except (TypeError, OSError):  # an old Pillow or no FreeType: the bitmap font
            font = ImageFont.load_default()
        drawn = label.replace("µ", "u")  # neither font has the micro sign; the pane's subtitle keeps "µm"
        x0 = win.pad_left + max(4, q.shape[1] // 40)
        y1 = win.pad_top + q.shape[0] - max(4, q.shape[0] // 30)
        thick = max(2, height_px // 120)
        draw.rectangle([x0 - 3, y1 - thick - text_px - 6, x0 + max(length, text_px * len(drawn) * 0.6) + 3, y1 + 3],
                       fill=(0, 0, 0))
        draw.rectangle([x0, y1 - thick, x0 + length, y1], fill=(255, 255, 255))
        draw.text((x0, y1 - thick - text_px - 4), drawn, fill=(255, 255, 255), font=font)
    return image, win, label

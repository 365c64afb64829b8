"""Keys bicubic upsampling as fixed PyTorch layers: what every trainable network adds its residual to, and what
the exported paired model starts from (pure; ONNX friendly).

:func:`bicubic_phase_kernels` are the S² phase kernels of Keys upsampling (a = -0.5) over a 5x5 LR neighbourhood,
:func:`symmetric_pad2` the half-sample symmetric padding by 2 px, and :class:`KeysUpsample` the layer made of them,
equal to :func:`refscope.models.image_ops.upsample_bicubic` per image.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .image_ops import keys_kernel
from .network_names import check_scale

__all__ = ["bicubic_phase_kernels", "symmetric_pad2", "KeysUpsample"]


def bicubic_phase_kernels(scale: int) -> np.ndarray:
    """(S², 1, 5, 5) float64 kernels: output phase (r_y, r_x) of Keys upsampling over the 5x5 LR neighbourhood.

    Output pixel S·i + r samples the input at ``i + δ_r``, ``δ_r = (r + 0.5)/S - 0.5``; its weight on input
    ``i + t`` (t = -2..2) is ``keys(δ_r - t)`` (zero beyond the 4 taps the NumPy matrix uses).
    """
    taps = np.arange(-2, 3)
    one_d = np.stack([keys_kernel((r + 0.5) / scale - 0.5 - taps) for r in range(scale)])  # (S, 5)
    phases = np.einsum("ay,bx->abyx", one_d, one_d).reshape(scale * scale, 1, 5, 5)
    return phases


def symmetric_pad2(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Half-sample symmetric padding by 2 along ``dim`` (x[1], x[0] | x | x[-1], x[-2]), ONNX friendly."""
    size = x.shape[dim]
    first, second = x.narrow(dim, 0, 1), x.narrow(dim, 1, 1)
    last, before = x.narrow(dim, size - 1, 1), x.narrow(dim, size - 2, 1)
    return torch.cat([second, first, x, last, before], dim=dim)


class KeysUpsample(nn.Module):
    """Fixed Keys bicubic upsampling (a = -0.5), (N, C, H, W) -> (N, C, S·H, S·W), C = 1.

    Equals :func:`refscope.models.image_ops.upsample_bicubic` per image (pixel-edge aligned, half-sample
    symmetric borders): 2-px symmetric padding with slices + ``cat``, one 5x5 convolution with the S² phase
    kernels of :func:`bicubic_phase_kernels`, ``PixelShuffle(S)``. The kernel is a non-persistent buffer: it is
    exported as a constant and never appears in a state dict.
    """

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        kernel = torch.as_tensor(bicubic_phase_kernels(self.scale), dtype=torch.float32)
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = symmetric_pad2(symmetric_pad2(x, 2), 3)
        return F.pixel_shuffle(F.conv2d(padded, self.kernel), self.scale)

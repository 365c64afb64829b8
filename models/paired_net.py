"""refscope's default paired reconstruction as a fully convolutional PyTorch module, exportable to ONNX.

:class:`PairedLibraryNet` computes what :func:`refscope.models.nlm.reconstruct_paired` computes (the NumPy
function is the oracle), on float32 (N, 1, H, W) input in *library units*, as fixed convolutions:

1. Keys bicubic upsampling by S (a = -0.5, pixel-edge aligned, half-sample symmetric borders, as
   :func:`refscope.models.image_ops.upsample_bicubic`): 2-px symmetric padding built with slices + ``cat``, one
   5x5 convolution with S² phase kernels, ``PixelShuffle(S)``.
2. Patch features on the query grid: reflect padding by n//2 and one strided convolution. Mean removal folds
   into the kernels, ``(P - mean P)·b = P·(b - sum(b)/n²)``; an extra box-filter channel gives ``mean P``.
3. Category blend: ``-||f - c||² + ||f||² = 2 f·c - ||c||²`` is a 1x1 convolution; ``TopK`` picks the
   ``n_probe`` nearest centroids, weights ``exp(-(d - d_min)/T)`` normalised (empty categories are dropped).
4. Per-category ridge maps, mean restoration and patch aggregation in one step: a single transposed convolution
   (stride = the query stride) over the k·(d+2) channels ``w_c · [f, 1, mean P]``, whose kernels are each
   category's (d+1, n²) regression matrix plus an all-ones kernel for ``mean P`` (the weights sum to 1). The
   coverage count is separable (the query grid is a product of row and column sets): two 1-D counts.

The NumPy grid (:func:`refscope.models.patches.patch_grid`) is the strided lattice plus the last row and
column. A strided convolution yields only the lattice, so the extra row, column and corner are computed from the
last n rows / columns of the padded image and added to the bottom / right strips, multiplied by a 0/1 mask that
is 0 when the last row (column) already lies on the lattice. The result equals the oracle everywhere, borders
included (float32 rounding only; :mod:`tests.models.test_paired_net`).

Receptive field: an output pixel depends on LR pixels within ``ceil(2·(n//2)/S) + 3`` px
(:func:`receptive_radius`), frame-edge handling included. The query lattice is anchored at the frame's top-left
corner, so tiled serving (:func:`refscope.models.tiling.process_tiled`) reproduces the untiled output only when
every tile window starts at a multiple of ``stride / gcd(S, stride)`` LR px: always when the stride divides S
(the default S = 2, stride = 2); at S = 3 with stride 2 tiles starting at odd LR columns/rows see a shifted
lattice and differ slightly from the untiled output.

:func:`export_paired_model` exports a fitted model with the intensity map in the manifest, so that
:class:`refscope.daemon.serve.runtime.OnnxModel` feeds raw LR intensities and gets LR intensities back.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .keys_upsample import bicubic_phase_kernels
from .keys_upsample import symmetric_pad2
from .nlm import PairedConfig, PairedRegressors, fit_paired_regressors, query_alignment, receptive_radius
from .patches import check_patch_size

__all__ = ["PAIRED_KIND", "PairedLibraryNet", "receptive_radius", "export_paired_model"]

#: Manifest ``kind`` of an exported paired-library model.
PAIRED_KIND = "paired-library"


class PairedLibraryNet(torch.nn.Module):
    """Fully convolutional :func:`~refscope.models.nlm.reconstruct_paired`: (N, 1, H, W) -> (N, 1, S·H, S·W).

    Input and output are float32 in library units (0-255 = the training LR's robust range). All arrays are
    stored as buffers (no trainable parameters).

    Parameters
    ----------
    regressors : PairedRegressors
        basis (n², d), feature_mean (d,), centroids (k, d+1) (inf rows = empty categories), weights (k, d+1, n²).
    patch_size : int
        n, odd.
    scale : int
        S >= 1.
    config : PairedConfig
        ``stride``, ``n_probe`` and ``sigma_n`` are used.
    noise_sigma : float
        Measured LR noise σ (library units); temperature ``T = 2 d (sigma_n · max(σ, 1e-6))²`` as the oracle.
    dtype : torch.dtype
        Buffer precision (float32 for serving; float64 for checking against the oracle).
    """

    def __init__(self, regressors: PairedRegressors, *, patch_size: int, scale: int, config: PairedConfig,
                 noise_sigma: float, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        n = check_patch_size(patch_size)
        if int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        basis = np.asarray(regressors.basis, dtype=np.float64)
        if basis.shape[0] != n * n:
            raise ValueError(f"regressor basis has {basis.shape[0]} rows; patch size {n} needs {n * n}")
        dim = basis.shape[1]
        centroids = np.asarray(regressors.centroids, dtype=np.float64)
        weights = np.asarray(regressors.weights, dtype=np.float64)
        finite = np.all(np.isfinite(centroids), axis=1)
        if not finite.any():
            raise ValueError("every library category is empty; fit the regressors on a non-empty library")
        centroids, weights = centroids[finite], weights[finite]  # an empty category is never among the nearest
        self.scale = int(scale)
        self.patch_size = n
        self.stride = config.query_stride(scale)
        self.n_categories = int(finite.sum())
        self.n_probe = min(int(config.n_probe), self.n_categories)
        self.dim = dim
        self.temperature = float(2.0 * dim * (config.sigma_n * max(float(noise_sigma), 1e-6)) ** 2)

        def buf(name: str, array: np.ndarray) -> None:
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(array), dtype=dtype))

        buf("up_kernel", bicubic_phase_kernels(self.scale))
        # features: d channels (P - mean P)·basis - feature_mean, then mean P
        kernels = basis - basis.sum(axis=0, keepdims=True) / (n * n)
        feat = np.concatenate([kernels.T, np.full((1, n * n), 1.0 / (n * n))]).reshape(dim + 1, 1, n, n)
        buf("feat_kernel", feat)
        buf("feat_bias", np.r_[-np.asarray(regressors.feature_mean, dtype=np.float64), 0.0])
        # scores 2 f·c - ||c||² over [f, 1] (larger = nearer): 1x1 conv on the d feature channels
        buf("score_kernel", (2.0 * centroids[:, :dim]).reshape(-1, dim, 1, 1))
        buf("score_bias", 2.0 * centroids[:, dim] - np.einsum("ij,ij->i", centroids, centroids))
        # overlap-add kernels: category c, input [f (d), 1, mean P] -> n x n predicted patch (one transposed conv)
        per_category = np.concatenate([weights, np.ones((len(weights), 1, n * n))], axis=1)  # (k, d+2, n²)
        buf("patch_kernel", per_category.reshape(-1, 1, n, n))
        buf("ones_kernel", np.ones((1, 1, n, n)))
        self.short = max(0, self.stride - n // 2 - 1)  # a lattice too sparse for the ConvT to reach the last pixel

    # -------------------------------------------------------------------------------------------- building
    @classmethod
    def from_library(cls, library, *, scale: int, config: PairedConfig = PairedConfig(), noise_sigma: float,
                     regressors: PairedRegressors | None = None, dtype: torch.dtype = torch.float32
                     ) -> "PairedLibraryNet":
        """From a :class:`~refscope.models.library.PairedLibrary` (regressors fitted when not given)."""
        if regressors is None:
            regressors = fit_paired_regressors(library, config)
        return cls(regressors, patch_size=library.patch_size, scale=scale, config=config, noise_sigma=noise_sigma,
                   dtype=dtype)

    @classmethod
    def from_fitted(cls, model, *, dtype: torch.dtype = torch.float32) -> "PairedLibraryNet":
        """From a :class:`~refscope.models.pipeline.FittedModel` (its paired config, noise and regressors)."""
        return cls(model.regressors, patch_size=model.library.patch_size, scale=model.scale, config=model.paired,
                   noise_sigma=model.noise_sigma, dtype=dtype)

    @property
    def workspace_bytes_per_px(self) -> float:
        """Peak inference memory per input pixel of a window, bytes (an upper estimate, float32).

        Per input pixel: the upsampled image and its padded/shuffled copies (4·S² floats) and, per query
        (``(S / stride)²`` of them per input pixel), the features (d+1), the k scores with their top-k weights
        and temporaries (5·k), ``[f, 1, mean]`` (d+2), the blended channels ``z`` (k·(d+2)) and the transposed
        convolution's column buffer (n²). Measured peak growth of ONNX Runtime's CPU arena on real models was
        1.5-2.9 KB per px at S = 2-8 (stride S); the estimate is that formula times 1.5.
        """
        queries = (self.scale / self.stride) ** 2
        k, d, n = self.n_categories, self.dim, self.patch_size
        floats = 4 * self.scale ** 2 + queries * ((d + 1) + 5 * k + (d + 2) + k * (d + 2) + n * n)
        return 1.5 * 4.0 * floats

    @property
    def receptive_radius(self) -> int:
        """LR pixels of context an output pixel depends on (minimum halo for tiling)."""
        return receptive_radius(self.scale, self.patch_size, self.stride)

    @property
    def halo(self) -> int:
        """The tiling halo, LR px: :attr:`receptive_radius` (recorded in the exported manifest)."""
        return self.receptive_radius

    @property
    def align(self) -> int:
        """Tile windows start at multiples of this many LR px: the query lattice's anchor
        (:func:`~refscope.models.nlm.query_alignment`; recorded in the exported manifest)."""
        return query_alignment(self.scale, self.stride)

    # -------------------------------------------------------------------------------------------- pieces
    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        """Keys bicubic upsampling, (N, 1, H, W) -> (N, 1, S·H, S·W); equals ``upsample_bicubic`` per image."""
        padded = symmetric_pad2(symmetric_pad2(x, 2), 3)
        if self.scale == 1:
            return F.conv2d(padded, self.up_kernel)
        return F.pixel_shuffle(F.conv2d(padded, self.up_kernel), self.scale)

    def _aggregate(self, region: torch.Tensor, stride: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict the patches of the queries of ``region`` (rows/cols of the padded upsampled image) on a
        ``stride`` lattice and overlap-add them.

        Returns the (N, 1, ·, ·) sum, whose first row/column is the first query's centre minus n//2, and a
        (1, 1, h, w) tensor of ones with the lattice's shape.
        """
        feats = F.conv2d(region, self.feat_kernel, self.feat_bias, stride=stride)  # (N, d+1, h, w)
        f, mean = feats[:, : self.dim], feats[:, self.dim:]
        scores = F.conv2d(f, self.score_kernel, self.score_bias)  # (N, k, h, w)
        top = torch.topk(scores, self.n_probe, dim=1).values
        # exp(-(d - d_min)/T) for the n_probe nearest (score >= the n_probe-th best), 0 for the others
        w = torch.exp((scores - top[:, :1]) / self.temperature) * (scores >= top[:, -1:]).to(scores.dtype)
        w = w / w.sum(dim=1, keepdim=True)
        # [f, 1, mean P]: the weights sum to 1, so the mean rides along as one more all-ones kernel per category
        f_ext = torch.cat([f, torch.ones_like(mean), mean], dim=1)
        z = (w.unsqueeze(2) * f_ext.unsqueeze(1)).flatten(1, 2)  # (N, k·(d+2), h, w)
        acc = F.conv_transpose2d(z, self.patch_kernel, stride=stride)  # one GEMM and one col2im
        if self.short:
            acc = F.pad(acc, (0, self.short, 0, self.short))
        return acc, torch.ones_like(mean[:1])

    def _coverage(self, ones: torch.Tensor, extra: torch.Tensor, dim: int, size: int) -> torch.Tensor:
        """Patches covering each output row (dim=2) or column (dim=3): lattice count + the extra last query."""
        half, s = self.patch_size // 2, self.stride
        line = ones.narrow(5 - dim, 0, 1)  # (1, 1, h, 1) or (1, 1, 1, w)
        kernel = self.ones_kernel[:, :, :, :1] if dim == 2 else self.ones_kernel[:, :, :1, :]
        step = (s, 1) if dim == 2 else (1, s)
        count = F.conv_transpose2d(line, kernel, stride=step)
        if self.short:
            count = F.pad(count, (0, self.short) if dim == 3 else (0, 0, 0, self.short))
        count = count.narrow(dim, half, size)
        tail = count.narrow(dim, size - half - 1, half + 1) + extra
        return torch.cat([count.narrow(dim, 0, size - half - 1), tail], dim=dim)

    def _off_lattice(self, size: torch.Tensor) -> torch.Tensor:
        """1.0 where index ``size - 1`` is not a multiple of the stride, else 0.0 (shape-derived, ONNX friendly)."""
        q = (size - 1.0) / float(self.stride)
        return (q != torch.floor(q)).to(size.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) library units -> (N, 1, S·H, S·W) library units, as ``reconstruct_paired``."""
        n, half, s = self.patch_size, self.patch_size // 2, self.stride
        up = self.upsample(x)
        height, width = up.shape[2], up.shape[3]
        padded = F.pad(up, (half, half, half, half), mode="reflect")
        # lattice rows 0, s, 2s, ... (< H); the last row H-1 is an extra query row unless s divides H-1
        extra_y = self._off_lattice(torch.cumsum(torch.ones_like(up[:1, :1, :, :1]), dim=2)[:, :, -1:])
        extra_x = self._off_lattice(torch.cumsum(torch.ones_like(up[:1, :1, :1, :]), dim=3)[..., -1:])

        acc, ones = self._aggregate(padded, (s, s))
        acc = acc[:, :, half:half + height, half:half + width]
        # extra row (query row H-1 at every lattice column): adds to the last half+1 output rows
        row, _ = self._aggregate(padded[:, :, -n:], (1, s))
        row = row[:, :, : half + 1, half:half + width] * extra_y
        acc = torch.cat([acc[:, :, : -(half + 1)], acc[:, :, -(half + 1):] + row], dim=2)
        # extra column (query column W-1 at every lattice row) plus the corner query (H-1, W-1)
        col, _ = self._aggregate(padded[:, :, :, -n:], (s, 1))
        col = col[:, :, half:half + height, : half + 1] * extra_x
        corner, _ = self._aggregate(padded[:, :, -n:, -n:], (1, 1))
        corner = corner[:, :, : half + 1, : half + 1] * (extra_x * extra_y)
        col = torch.cat([col[:, :, : -(half + 1)], col[:, :, -(half + 1):] + corner], dim=2)
        acc = torch.cat([acc[..., : -(half + 1)], acc[..., -(half + 1):] + col], dim=3)
        # the query grid is a product of row and column sets, so the coverage count is separable
        coverage = self._coverage(ones, extra_y, 2, height) * self._coverage(ones, extra_x, 3, width)
        return acc / torch.clamp(coverage, min=1e-12)


def export_paired_model(model, *, opset: int = 17, version: str = "1", validation=(),
                        sample_shape: tuple[int, int] = (16, 16)):
    """Export a fitted model's default (``paired``) reconstruction to ONNX.

    Parameters
    ----------
    model : FittedModel
        Library, intensity map, scale, noise and paired config (:mod:`refscope.models.pipeline`).
    opset : int
        ai.onnx opset (TopK, Pad reflect, DepthToSpace and ConvTranspose need nothing newer than 11).
    version, validation
        Manifest fields.
    sample_shape : (int, int)
        Tracing sample (LR px); at least 8 per side.

    Returns
    -------
    (bytes, ModelManifest)
        The model maps library units to library units; the manifest carries the intensity map
        ``x_norm = (x - low) · 255 / (high - low)`` (``input_offset = low``, ``input_scale = 255/(high - low)``)
        so :class:`refscope.daemon.serve.runtime.OnnxModel` takes and returns LR intensities. ``kind`` is
        ``"paired-library"``, ``library_size`` = len(library), ``halo`` and ``align`` the exact tiling of
        :attr:`PairedLibraryNet.halo` / :attr:`PairedLibraryNet.align`.
    """
    from .onnx_export import export_torch_module

    net = PairedLibraryNet.from_fitted(model)
    low, high = float(model.intensity.low), float(model.intensity.high)
    with warnings.catch_warnings():
        # torch's reflect-pad symbolic reverses its constant pad list with a steps=-1 Slice, which its constant
        # folder then declines to fold: harmless (one tiny Slice at run time), reported as a UserWarning
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        return export_torch_module(net, scale=model.scale, opset=opset, kind=PAIRED_KIND, input_offset=low,
                                   input_scale=255.0 / (high - low), library_size=len(model.library),
                                   version=version, validation=validation, sample_shape=sample_shape,
                                   workspace_bytes_per_px=net.workspace_bytes_per_px)

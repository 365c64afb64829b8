"""EMSR: edge-attention + window self-attention super-resolution for electron microscopy (Khateri et al.).

(N, 1, H, W) float32 normalised LR -> (N, 1, S·H, S·W), as every network of
:mod:`refscope.models.networks`. Layout (paper Sec. II-C, Figs. 2-3)::

    X_SF = Conv3x3(y)                                           shallow features, eq. 10
    X    = X_SF;  for each of k basic blocks: X = BasicBlock(X, y)   edge attention H_EA, eq. 11
    x    = bicubic(y) + H_R(X + X_SF)                            reconstruction, eq. 15 (+ global bicubic skip)

    BasicBlock(X, y):
        F = ResBlocks_m(X)
        D = ResBlocks_n(F)                                      upper path: deep features
        r = Conv3x3(ReLU(Conv3x3(F)))                           lower path: LR-space reconstruction, 1 channel
        E = ATW([r, y]) at J scales -> 2J detail planes         multi-scale edges (à trous B3-spline wavelet)
        A = sigmoid(Conv(ReLU(Conv(Conv1x1(E)))))               attention block: C attention maps in (0, 1)
        G = D + D * A                                           attentioned features added to the upper path
        G = ViT(G)                                              W-MSA + FFN, eqs. 12-14
        return X + Conv3x3(G)                                   block residual

H_R is Conv3x3 (C -> C·S²), PixelShuffle(S), then the "mapper" Conv3x3 -> ReLU -> Conv3x3 (-> 1 channel); its
last convolution starts at zero, so an untrained EMSR returns bicubic exactly.

The à trous wavelet (Starck & Murtagh) smooths with the separable B3-spline ``[1, 4, 6, 4, 1] / 16`` dilated
by ``2^(j-1)`` (replicate borders) and keeps the details ``w_j = c_(j-1) - c_j``: fixed depthwise convolutions,
undecimated, so it runs on any H, W. The W-MSA splits the features into non-overlapping M x M windows
(``window``), padding H and W up to multiples of M inside ``forward``; padded tokens are masked out of the
softmax, so the result does not depend on the padding. Everything uses ONNX opset-17 ops (Pad, Reshape,
Transpose, MatMul, Softmax, LayerNormalization) with shapes computed at run time, so dynamic H/W export.

Two choices the paper leaves open are fixed here: the attention maps multiply the upper-path deep features and
the product is added to them (``G = D(1 + A)``), and every basic block has a residual connection.

References
----------
M. Khateri, M. Ghahremani, A. Sierra, J. Tohka, "No-Clean-Reference Image Super-Resolution: Application to
Electron Microscopy", IEEE TCI (2024): eqs. 10-15 and Sec. III-B-1 (paper size: C = 64, k = 3, m = 4, n = 4,
16 heads, window 4, MLP ratio 2, three ATW scales). J.-L. Starck, F. Murtagh, "Image restoration with noise
suppression using the wavelet transform", A&A 288 (1994) (à trous algorithm).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .keys_upsample import KeysUpsample
from .network_names import check_scale

__all__ = ["EMSR", "PAPER_EMSR", "AtrousWavelet", "WindowAttention", "ViTBlock", "ResBlock", "BasicBlock"]

#: Keyword arguments of the paper-size EMSR (Sec. III-B-1). Note: 16 heads need channels divisible by 16.
PAPER_EMSR: dict[str, int | float] = {"channels": 64, "n_blocks": 3, "n_resblocks": 4, "n_deep": 4,
                                      "window": 4, "heads": 16, "atw_levels": 3, "mlp_ratio": 2.0}

_B3 = (1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16)


class AtrousWavelet(nn.Module):
    """Undecimated (à trous) B3-spline wavelet details: (N, c, H, W) -> (N, c·J, H, W).

    Output channel ``j·c + i`` is ``w_(j+1)`` of input channel ``i``, with ``c_0 = x``,
    ``c_j = h_j * c_(j-1)`` (h_j: separable B3-spline dilated by ``2^(j-1)``, replicate borders) and
    ``w_j = c_(j-1) - c_j``. The coarse residual ``c_J`` is not returned (edges only).
    """

    def __init__(self, channels: int, levels: int = 3) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.channels, self.levels = int(channels), int(levels)
        taps = torch.tensor(_B3, dtype=torch.float32)
        self.register_buffer("kernel_y", taps.view(1, 1, 5, 1).repeat(self.channels, 1, 1, 1), persistent=False)
        self.register_buffer("kernel_x", taps.view(1, 1, 1, 5).repeat(self.channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        details = []
        coarse = x
        for j in range(self.levels):
            d = 2 ** j
            smooth = F.conv2d(F.pad(coarse, (0, 0, 2 * d, 2 * d), mode="replicate"), self.kernel_y,
                              dilation=(d, 1), groups=self.channels)
            smooth = F.conv2d(F.pad(smooth, (2 * d, 2 * d, 0, 0), mode="replicate"), self.kernel_x,
                              dilation=(1, d), groups=self.channels)
            details.append(coarse - smooth)
            coarse = smooth
        return torch.cat(details, dim=1)


class ResBlock(nn.Module):
    """Conv3x3 -> ReLU -> Conv3x3 plus identity (no normalisation), (N, C, H, W) -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class WindowAttention(nn.Module):
    """Window multi-head self-attention (eqs. 13-14) on (N, C, H, W) features, any H, W.

    The map is padded (zeros) to multiples of ``window`` = M, split into M x M windows of M² tokens, and each
    head computes ``SoftMax(Q K^T / sqrt(d_k) + mask) V`` with ``d_k = C / heads``; the mask is -1e4 on padded
    key tokens. Heads are concatenated and projected back to C channels; the padding is cropped off.
    """

    def __init__(self, channels: int, window: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.window, self.heads = int(window), int(heads)
        self.head_dim = channels // heads
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def _partition(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, Hp, Wp) -> (N·nWin, M², C)."""
        n, c, hp, wp = x.shape
        m = self.window
        x = x.reshape(n, c, hp // m, m, wp // m, m).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(-1, m * m, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        m = self.window
        pad_h, pad_w = (m - h % m) % m, (m - w % m) % m
        valid = F.pad(torch.ones_like(x[:1, :1]), (0, pad_w, 0, pad_h))          # (1, 1, Hp, Wp) 1 = real
        xp = F.pad(x, (0, pad_w, 0, pad_h))
        hp, wp = xp.shape[2], xp.shape[3]
        tokens = self._partition(xp)                                              # (B, M², C)
        bias = (self._partition(valid) - 1.0).reshape(1, -1, 1, 1, m * m) * 1e4  # (1, nWin, 1, 1, M²)
        qkv = self.qkv(tokens).reshape(-1, m * m, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                                          # (B, heads, M², d)
        logits = torch.matmul(q, k.transpose(-2, -1)) * (self.head_dim ** -0.5)
        logits = (logits.reshape(n, -1, self.heads, m * m, m * m) + bias).reshape(-1, self.heads, m * m, m * m)
        out = torch.matmul(torch.softmax(logits, dim=-1), v)                      # (B, heads, M², d)
        out = self.proj(out.transpose(1, 2).reshape(-1, m * m, c))
        out = out.reshape(n, hp // m, wp // m, m, m, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, hp, wp)
        return out[:, :, :h, :w]


class ViTBlock(nn.Module):
    """``X' = W-MSA(LN(X)) + X``, ``X'' = FFN(LN(X')) + X'`` (eq. 12); FFN = Linear -> ReLU -> Linear."""

    def __init__(self, channels: int, window: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        hidden = max(1, int(round(channels * mlp_ratio)))
        self.norm1 = nn.LayerNorm(channels)
        self.attn = WindowAttention(channels, window, heads)
        self.norm2 = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = x + self.attn(y)
        t = x.permute(0, 2, 3, 1)
        return (t + self.ffn(self.norm2(t))).permute(0, 3, 1, 2)


class BasicBlock(nn.Module):
    """One basic block of the edge-attention module (see the module docstring)."""

    def __init__(self, channels: int, n_resblocks: int, n_deep: int, window: int, heads: int,
                 atw_levels: int, mlp_ratio: float) -> None:
        super().__init__()
        self.body = nn.Sequential(*[ResBlock(channels) for _ in range(n_resblocks)])
        self.deep = nn.Sequential(*[ResBlock(channels) for _ in range(n_deep)])
        self.to_image = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(channels, 1, 3, padding=1))
        self.atw = AtrousWavelet(2, atw_levels)
        self.edge_filter = nn.Conv2d(2 * atw_levels, channels, 1)
        self.attention = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                       nn.Conv2d(channels, channels, 3, padding=1), nn.Sigmoid())
        self.vit = ViTBlock(channels, window, heads, mlp_ratio)
        self.out = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        feats = self.body(x)
        deep = self.deep(feats)
        edges = self.atw(torch.cat([self.to_image(feats), y], dim=1))
        attn = self.attention(self.edge_filter(edges))
        return x + self.out(self.vit(deep + deep * attn))


class EMSR(nn.Module):
    """EMSR network (paper Figs. 2-3) with a global bicubic skip; reduced CPU-trainable size by default.

    Parameters
    ----------
    scale : int
        Upscaling factor S.
    channels : int
        Feature channels C (paper 64); must be divisible by ``heads``.
    n_blocks : int
        Basic blocks k (paper 3).
    n_resblocks : int
        Residual blocks m before the two paths (paper 4).
    window : int
        W-MSA window side M in LR px (paper 4).
    heads : int
        Attention heads (paper 16).
    n_deep : int, optional
        Residual blocks n of the upper path (paper 4); defaults to ``n_resblocks``.
    atw_levels : int
        À trous wavelet scales J (paper 3).
    mlp_ratio : float
        FFN hidden width / C (paper 2).

    Notes
    -----
    The paper-size network is ``EMSR(scale, **PAPER_EMSR)`` (2.7 M parameters at S = 3). The default (C = 32,
    k = 2, m = n = 1, window 8, 4 heads) has 213 k parameters at S = 2 and trains at about 3 steps/s (batch 8
    of 32 x 32 LR patches) on one CPU core.
    """

    def __init__(self, scale: int, channels: int = 32, n_blocks: int = 2, n_resblocks: int = 1, window: int = 8,
                 heads: int = 4, *, n_deep: int | None = None, atw_levels: int = 3, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        if channels < 1 or n_blocks < 1 or n_resblocks < 0 or window < 1 or heads < 1:
            raise ValueError(f"invalid EMSR size: channels={channels}, n_blocks={n_blocks}, "
                             f"n_resblocks={n_resblocks}, window={window}, heads={heads}")
        n_deep = n_resblocks if n_deep is None else int(n_deep)
        self.upsample = KeysUpsample(self.scale)
        self.shallow = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.ModuleList([BasicBlock(channels, n_resblocks, n_deep, window, heads, atw_levels, mlp_ratio)
                                     for _ in range(n_blocks)])
        self.reconstruct = nn.Sequential(nn.Conv2d(channels, channels * self.scale ** 2, 3, padding=1),
                                         nn.PixelShuffle(self.scale))
        self.mapper = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(channels, 1, 3, padding=1))
        nn.init.zeros_(self.mapper[-1].weight)
        nn.init.zeros_(self.mapper[-1].bias)
        # LR px of context per block: residual convs, to_image, the ATW support 2(2^J - 1), attention convs, one
        # window (attention spans its window) and the output conv; plus shallow, reconstruction and bicubic.
        # Windows are anchored at the input's top-left corner, so tiles should also start at multiples of M.
        per_block = 2 * (n_resblocks + n_deep) + 2 + 2 * (2 ** atw_levels - 1) + 2 + (window - 1) + 1
        self.halo = 1 + n_blocks * per_block + 2 + 2
        self.align = int(window)  # the W-MSA windows are anchored at the input's top-left corner

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        shallow = self.shallow(y)
        x = shallow
        for block in self.blocks:
            x = block(x, y)
        return self.upsample(y) + self.mapper(self.reconstruct(x + shallow))

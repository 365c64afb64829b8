"""Trainable super-resolution networks and their registry: (N, 1, H, W) float32 -> (N, 1, S·H, S·W).

Every network here

* takes one normalised grayscale channel, ``x_norm = (x - input_offset) * input_scale`` where the offset and
  scale map the training LR's robust range (0.5-99.5 percentiles) onto [0, 1]
  (:class:`refscope.models.training.Normalisation`, stored in the :class:`~refscope.models.manifest.ModelManifest`
  as ``input_offset`` / ``input_scale``), and returns the super-resolved image in the same units;
* learns a residual over Keys bicubic upsampling computed *inside* the module with fixed weights
  (:class:`KeysUpsample`), and its last layer starts at zero, so an untrained network is exactly bicubic;
* accepts any N, H, W (H, W >= 2) and exports to ONNX opset 17 with dynamic N/H/W
  (:func:`refscope.models.onnx_export.export_torch_module`);
* exposes ``scale`` (S), ``halo`` (LR pixels of context an output pixel depends on; the minimum tiling
  halo) and ``align`` (tile windows must start at multiples of this many LR px to see the grid an untiled call
  sees); :func:`refscope.models.onnx_export.export_torch_module` records both in the
  :class:`~refscope.models.manifest.ModelManifest`, so serving tiles every network exactly.

:data:`NETWORKS` maps a name to its constructor; :func:`build_network` builds one by name.
The name ``"auto"`` stands for the network refscope serves at each scale
(:func:`refscope.models.network_names.resolve_network`). :class:`BlendedSR` (``"blend"``, in
:data:`COMPOSITE_NETWORKS`) is not trained itself: it serves several trained networks as one graph
(:mod:`refscope.models.net_blend`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .baseline import TRUNCATE
from .emsr import EMSR
from .keys_upsample import KeysUpsample
from .network_names import check_scale as _check_scale
from .network_names import resolve_network
from .tiling import conv_workspace_bytes_per_px

__all__ = ["KeysUpsample", "CompactSR", "FullResSR", "BaselineSR", "BlendedSR", "NETWORKS", "COMPOSITE_NETWORKS",
           "FIXED_NETWORKS", "build_network", "count_parameters"]


def _check_size(channels: int, n_layers: int) -> None:
    if channels < 1 or n_layers < 0:
        raise ValueError(f"need channels >= 1 and n_layers >= 0, got {channels} and {n_layers}")


def _conv_relu_body(channels: int, n_layers: int) -> nn.Sequential:
    """``n_layers`` x (3x3 convolution, ``channels`` -> ``channels``, then ReLU)."""
    body: list[nn.Module] = []
    for _ in range(n_layers):
        body += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*body)


def _zero_tail(channels: int, out_channels: int) -> nn.Conv2d:
    """The last 3x3 convolution, started at zero: an untrained network is exactly its bicubic base."""
    tail = nn.Conv2d(channels, out_channels, 3, padding=1)
    nn.init.zeros_(tail.weight)
    nn.init.zeros_(tail.bias)
    return tail


class CompactSR(nn.Module):
    """Fast residual CNN over a bicubic base whose body runs at half the LR resolution (the default before ``fullres``).

    Layout (C = ``channels``, L = ``n_layers``)::

        base = KeysUpsample(S)(x)                                  (N, 1, S·H, S·W)
        f    = ReLU(Conv4x4/2(pad_replicate(x, 1 | 2)))            (N, C, ceil(H/2), ceil(W/2))
        f    = f + [Conv3x3 -> ReLU] x L (f)
        r    = PixelShuffle(2S)(Conv3x3(f -> 4·S² channels))      (N, 1, 2S·ceil(H/2), 2S·ceil(W/2))
        out  = base + r[:, :, :S·H, :S·W]

    The body runs at half the LR resolution (the stride-2 4x4 head is a learned space-to-depth), which makes it
    four times cheaper per parameter than a full-resolution body: 174 k parameters at S = 2 (C = 48, L = 8;
    183 k at S = 3, 195 k at S = 4) yet 3.5-5 Mpx/s of 1280 x 944 output with ONNX Runtime on a shared,
    loaded two-core CPU. Head window ``j`` covers LR pixels
    ``2j - 1 .. 2j + 2`` and its 2S x 2S output block covers LR pixels ``2j, 2j + 1``. Tiled serving reproduces
    the untiled output exactly when every tile starts at an even LR offset and keeps :attr:`halo` LR px of
    context.

    Parameters
    ----------
    scale : int
        Upscaling factor S (2, 3 or 4 are the supported serving scales; 2..8 are accepted).
    channels : int
        Feature channels C of the half-resolution body.
    n_layers : int
        Number L of 3x3 conv + ReLU layers in the body.
    """

    def __init__(self, scale: int, *, channels: int = 48, n_layers: int = 8) -> None:
        super().__init__()
        self.scale = _check_scale(scale)
        _check_size(channels, n_layers)
        self.upsample = KeysUpsample(self.scale)
        self.head = nn.Conv2d(1, channels, 4, stride=2)
        self.body = _conv_relu_body(channels, n_layers)
        self.tail = _zero_tail(channels, 4 * self.scale * self.scale)
        # LR px: head reaches 2 px, each 3x3 layer at half resolution 2 px, plus the phase within a 2 x 2 cell
        self.halo = 2 + 2 * (n_layers + 1) + 1
        self.align = 2  # the stride-2 head's 2 x 2 cells are anchored at the input's origin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.upsample(x)
        f = F.relu(self.head(F.pad(x, (1, 2, 1, 2), mode="replicate")))
        f = f + self.body(f)
        residual = F.pixel_shuffle(self.tail(f), 2 * self.scale)
        return base + residual[:, :, : base.shape[2], : base.shape[3]]


class FullResSR(nn.Module):
    """Residual CNN over a bicubic base whose body runs at the full LR resolution; what ``"auto"`` serves today.

    Layout (C = ``channels``, L = ``n_layers``), ESPCN-style sub-pixel output (Shi et al., CVPR 2016)::

        base = KeysUpsample(S)(x)                                  (N, 1, S·H, S·W)
        f    = ReLU(Conv3x3(x))                                    (N, C, H, W)
        f    = [Conv3x3 -> ReLU] x L (f)
        out  = base + PixelShuffle(S)(Conv3x3(f -> S² channels))   (N, 1, S·H, S·W)

    Every LR pixel has its own feature vector and its own S x S output block, where :class:`CompactSR` shares
    one feature vector between 2 x 2 LR pixels: at S = 4 on the real SEM pairs that is worth +0.2 to +0.3 dB
    (``benchmarks/RESULTS.md``). Its cost per output pixel falls as 1/S²: 111 k parameters (C = 48, L = 5,
    S = 4) run a 1280 x 944 output in about 0.1 s at S = 4 and 0.23 s at S = 3 with ONNX Runtime on two cores;
    at S = 2 the default C = 32 keeps it at about 0.27 s. Zero padding at the frame border (the
    network learns it on 32 px training patches); tiled serving reproduces the untiled output exactly with
    :attr:`halo` LR px of context and any tile origin.

    Parameters
    ----------
    scale : int
        Upscaling factor S (2..8).
    channels : int, optional
        Feature channels C; default 48, and 32 at S = 2 (where the body's cost per output pixel is highest:
        0.27 s for a 1280 x 944 output instead of 0.53 s with C = 48).
    n_layers : int
        Number L of 3x3 conv + ReLU layers between the head and the tail (L + 2 convolutions in all).
    """

    def __init__(self, scale: int, *, channels: int | None = None, n_layers: int = 5) -> None:
        super().__init__()
        self.scale = _check_scale(scale)
        channels = (32 if self.scale == 2 else 48) if channels is None else channels
        _check_size(channels, n_layers)
        self.upsample = KeysUpsample(self.scale)
        self.head = nn.Conv2d(1, channels, 3, padding=1)
        self.body = _conv_relu_body(channels, n_layers)
        self.tail = _zero_tail(channels, self.scale * self.scale)
        # LR px: one per 3x3 convolution (the Keys base reaches 2)
        self.halo = max(n_layers + 2, 2)
        self.align = 1  # every layer is translation-equivariant: any tile origin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(F.relu(self.head(x)))
        return self.upsample(x) + F.pixel_shuffle(self.tail(f), self.scale)


class BaselineSR(nn.Module):
    """The safe baseline as a fixed layer: Keys bicubic upsampling blurred by a Gaussian of σ output px.

    ::

        y = (G_σ * bicubic_S(x)) / (G_σ * 1)                                                          (1)

    the baseline of :mod:`refscope.models.baseline` (its equation (1)), with the Gaussian cut at
    :data:`~refscope.models.baseline.TRUNCATE` σ as SciPy cuts it. Inside the frame the two are equal; within
    ``4σ`` of the frame's edge this layer averages only the pixels inside the frame (normalised convolution: the
    blur of the frame divided by the blur of ones), where :func:`~refscope.models.baseline.baseline_block`
    reflects them, so that any tile of at least one pixel runs and the ONNX graph needs no padding mode. It has
    no parameters: a blend (:class:`BlendedSR`) holds it as a member to pull the session's networks toward the
    baseline by a share chosen on held-out references (:func:`refscope.models.net_blend.with_baseline`). Linear
    with unit gain, so it serves unchanged in any :class:`~refscope.models.training.Normalisation`.

    Parameters
    ----------
    scale : int
        Upscaling factor S.
    sigma_px : float
        σ of the Gaussian, output px (>= 0; 0: bicubic itself).
    """

    def __init__(self, scale: int, *, sigma_px: float = 0.0) -> None:
        super().__init__()
        self.scale = _check_scale(scale)
        if not (math.isfinite(sigma_px) and sigma_px >= 0):
            raise ValueError(f"BaselineSR: sigma_px must be a finite number >= 0 output px, got {sigma_px!r}")
        self.sigma_px = float(sigma_px)
        self.radius = int(TRUNCATE * self.sigma_px + 0.5) if self.sigma_px > 0 else 0  # SciPy's cut
        taps = torch.arange(-self.radius, self.radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (taps / self.sigma_px) ** 2) if self.radius else torch.ones(1, dtype=torch.float64)
        kernel = (kernel / kernel.sum()).to(torch.float32)
        self.register_buffer("kernel_x", kernel.reshape(1, 1, 1, -1), persistent=False)
        self.register_buffer("kernel_y", kernel.reshape(1, 1, -1, 1), persistent=False)
        self.upsample = KeysUpsample(self.scale)
        self.halo = 2 + math.ceil(self.radius / self.scale)  # the Keys taps, then the Gaussian's reach in LR px
        self.align = 1
        # float32 buffers of the output's size alive at once: the bicubic image, one blurred pass, the result,
        # one temporary (S² output px per input px)
        self.workspace_bytes_per_px = 4.0 * 4 * self.scale ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.upsample(x)
        if not self.radius:
            return up
        blurred = F.conv2d(F.conv2d(up, self.kernel_x, padding=(0, self.radius)), self.kernel_y,
                           padding=(self.radius, 0))
        # G_σ * 1 is separable too: the product of the row and column sums of the kernel inside the frame
        across = F.conv2d(torch.ones_like(up[:1, :, :1, :]), self.kernel_x, padding=(0, self.radius))
        down = F.conv2d(torch.ones_like(up[:1, :, :, :1]), self.kernel_y, padding=(self.radius, 0))
        return blurred / (across * down)


class BlendedSR(nn.Module):
    """Several trained networks served as one graph: the weighted mean of their outputs.

    ::

        y = Σ_k w_k · (g_k · f_k(a_k · x + b_k) + h_k),     Σ_k w_k = 1, w_k >= 0

    where ``f_k`` is member k in its own network units and the affine maps carry the blend's input units into
    them (``a_k``, ``b_k``) and its output back (``g_k``, ``h_k``): members trained with different
    :class:`~refscope.models.training.Normalisation` serve together exactly. Two networks that start apart (a
    fine-tuned prior and one trained from scratch on the same reference) err differently, so their mean is closer
    to the HR than either (``benchmarks/RESULTS.md``, "Serving the fine-tune with a companion network").

    The cost of a pass is the members' together; ``halo`` is the largest member's, ``align`` their least common
    multiple and ``workspace_bytes_per_px`` the largest member's estimate plus two output-sized buffers (the
    members run one after the other; a finished member's output and the running sum stay alive), so tiling stays
    exact and memory bounded.

    Parameters
    ----------
    scale : int
        Upscaling factor S, every member's.
    members : sequence of mappings
        One per member: ``network`` (a :data:`NETWORKS` or :data:`FIXED_NETWORKS` name), ``kwargs`` (its
        constructor's), ``input``
        ``[a, b]`` and ``output`` ``[g, h]`` (the affine maps above; ``[1, 0]`` when the units agree).
    weights : sequence of float
        ``w_k``, one per member, non-negative, summing to 1.
    """

    def __init__(self, scale: int, *, members: Sequence[Mapping], weights: Sequence[float]) -> None:
        super().__init__()
        self.scale = _check_scale(scale)
        if len(members) < 2 or len(weights) != len(members):
            raise ValueError(f"a blend needs >= 2 members and one weight each, got {len(members)} members and "
                             f"{len(weights)} weights")
        if any(not math.isfinite(w) or w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(f"blend weights must be >= 0 and sum to 1, got {list(weights)}")
        nets, maps = [], []
        for k, member in enumerate(members):
            constructor = NETWORKS.get(member.get("network")) or FIXED_NETWORKS.get(member.get("network"))
            if constructor is None:
                raise ValueError(f"blend member {k}: network must be one of {', '.join([*NETWORKS, *FIXED_NETWORKS])}, "
                                 f"got {member.get('network')!r}")
            gains = [float(v) for v in (*member.get("input", (1.0, 0.0)), *member.get("output", (1.0, 0.0)))]
            if len(gains) != 4 or not all(math.isfinite(v) for v in gains) or gains[0] == 0 or gains[2] == 0:
                raise ValueError(f"blend member {k}: input and output must be finite [gain != 0, offset] pairs, got "
                                 f"{member.get('input')!r}, {member.get('output')!r}")
            nets.append(constructor(self.scale, **dict(member.get("kwargs") or {})))
            maps.append(gains)
        self.members = nn.ModuleList(nets)
        self.weights = [float(w) for w in weights]
        self.maps = maps
        self.halo = max(int(net.halo) for net in nets)
        self.align = math.lcm(*(int(net.align) for net in nets))
        # members run one after the other: the largest one's working memory, plus the finished members' output
        # and the running sum kept alive beside it (float32, S² per input px each)
        self.workspace_bytes_per_px = (max(getattr(net, "workspace_bytes_per_px", None)
                                           or conv_workspace_bytes_per_px(net, self.scale) for net in nets)
                                       + 2 * 4 * self.scale ** 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for net, w, (a, b, g, h) in zip(self.members, self.weights, self.maps):
            if w == 0:
                continue
            y = (w * g) * net(x if (a, b) == (1.0, 0.0) else a * x + b)  # identity maps stay out of the graph
            if h:
                y = y + w * h
            out = y if out is None else out + y
        return out


#: Network constructors by name; each is called as ``constructor(scale, **kwargs)``.
NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "compact": CompactSR,
    "fullres": FullResSR,
    "emsr": EMSR,
}

#: Networks made of trained :data:`NETWORKS` rather than trained themselves (:func:`build_network` builds them
#: too, so a saved blend loads like any network; they are not offered for training).
COMPOSITE_NETWORKS: dict[str, Callable[..., nn.Module]] = {"blend": BlendedSR}

#: Fixed layers with no trained weights that a blend may hold as a member (:class:`BaselineSR`, the safe
#: baseline); :func:`build_network` builds them too, they are not offered for training.
FIXED_NETWORKS: dict[str, Callable[..., nn.Module]] = {"baseline": BaselineSR}


def build_network(name: str, *, scale: int, seed: int | None = None, **kwargs) -> nn.Module:
    """Build the network registered as ``name`` for upscaling factor ``scale``.

    Parameters
    ----------
    name : str
        A key of :data:`NETWORKS` (``"compact"``, ``"fullres"``, ``"emsr"``), ``"auto"``
        (:func:`~refscope.models.network_names.resolve_network`), of :data:`COMPOSITE_NETWORKS` (``"blend"``) or
        of :data:`FIXED_NETWORKS` (``"baseline"``).
    scale : int
        Upscaling factor S.
    seed : int, optional
        Seed for the weight initialisation (drawn inside :func:`torch.random.fork_rng`, so the global torch
        RNG is left untouched); ``None`` uses the global RNG.
    **kwargs
        Passed to the constructor (e.g. ``channels=64`` for the paper-size EMSR).

    Raises
    ------
    KeyError
        For an unknown name; the message lists the known ones.
    """
    constructor = COMPOSITE_NETWORKS.get(name) or FIXED_NETWORKS.get(name) or NETWORKS[resolve_network(name, scale)]
    if seed is None:
        return constructor(scale, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return constructor(scale, **kwargs)


def count_parameters(network: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad)

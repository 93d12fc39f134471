"""Pure-PyTorch Vision Mamba (Vim, hustvl/Vim: bimamba v2, middle CLS token) with a pluggable
patch order.

Module names and parameter shapes follow the official ``vim/models_mamba.py`` and its
``mamba_ssm`` ``Mamba`` mixer, so that the released checkpoints load with ``strict=True``; both
scans of a mixer are one call of ``models.scan.selective_scan``.

The hidden states are kept in *token order*: the P patches row-major, then the CLS token
(token P). All that acts per token (position embedding, RMSNorm, residual, in/out projections)
does not care about the order; only a mixer lays its tokens out along its two routes, as
SS2D does. Route 0 is route 0 of the patch order with the CLS token inserted at step P // 2,
route 1 its reverse; for ``bidirectional`` this is exactly the official sequence and its flip.

Shape legend: Bt batch, C d_model, D inner channels (expand * C), N states, R dt rank,
H x W patch grid, P = H * W patches, T = P + 1 tokens, K = 2 routes (forward, backward),
k conv width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mambapanel import orders
from mambapanel.models.scan import along_routes, merge_routes, selective_scan

Tensor = torch.Tensor


def grid_size(img_size: int | tuple[int, int], patch_size: int, stride: int) -> tuple[int, int]:
    """Patch grid (H, W) of the official patch embedding (a conv without padding)."""
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    return (height - patch_size) // stride + 1, (width - patch_size) // stride + 1


def token_routes(order: str, height: int, width: int) -> Tensor:
    """The two routes of a Vim mixer: r(K=2, T), the token visited at each step.

    Tokens are the patches row-major (0 .. P-1) and the CLS token (P). Route 0 is route 0 of
    ``order`` with the CLS token inserted at step P // 2; route 1 is route 0 reversed.
    """
    patches = orders.single_route(order, height, width)
    middle = len(patches) // 2
    cls = torch.tensor([len(patches)])
    forward = torch.cat([patches[:middle], cls, patches[middle:]])
    return torch.stack([forward, forward.flip(0)])


def position_index(num_patches: int) -> Tensor:
    """Row of ``pos_embed`` for each token: upstream adds it to the row-major sequence with
    the CLS token in the middle (position P // 2); here the CLS token is token P."""
    middle = num_patches // 2
    index = torch.arange(num_patches + 1)
    index[middle:num_patches] += 1
    index[num_patches] = middle
    return index


@dataclass
class VimScanInputs:
    """Everything the two scans of one Vim mixer consume; what a capture records.

    Token order: patches row-major, then the CLS token (``cls_token`` = P). Step order: the
    order in which route k visits the tokens, ``routes[k]``.
    """

    x: Tensor  # r(Bt, D, T) in_proj output before the convs, token order
    z: Tensor  # r(Bt, D, T) gate (in_proj's second half), token order
    u: Tensor  # r(Bt, K, D, T) after route k's causal conv and SiLU, step order of route k
    delta: Tensor  # r(Bt, K, D, T) softplus(dt_proj(dt) + bias), step order
    A: Tensor  # r(K, D, N) = -exp(A_log), -exp(A_b_log)
    B: Tensor  # r(Bt, K, N, T), step order
    C: Tensor  # r(Bt, K, N, T), step order
    Ds: Tensor  # r(K, D) skip weights D, D_b
    routes: Tensor  # r(K, T) token visited at each step; routes[1] = routes[0].flip(0)
    conv_weight: Tensor  # r(K, D, 1, k) causal depthwise conv of each route (conv1d, conv1d_b)
    conv_bias: Tensor | None  # r(K, D)
    grid: tuple[int, int]  # (H, W) patch grid
    if_divide_out: bool  # the merged output is halved before out_proj

    @property
    def cls_token(self) -> int:
        """Token index of the CLS token (= P, after the patches)."""
        return self.grid[0] * self.grid[1]

    @property
    def cls_steps(self) -> tuple[int, ...]:
        """The step at which each route visits the CLS token."""
        return tuple(int(s) for s in orders.inverse(self.routes)[:, self.cls_token])


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last axis, bias-free as upstream's ``RMSNorm``; computed
    in at least float32, as upstream's fused kernel does."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.to(_at_least_float32(x.dtype))
        return (h * (1 / torch.sqrt(h.square().mean(-1, keepdim=True) + self.eps))) * self.weight


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def add_and_norm(hidden: Tensor, residual: Tensor | None, norm: RMSNorm) -> tuple[Tensor, Tensor]:
    """Upstream's fused add + RMSNorm with ``residual_in_fp32``: residual += hidden, the
    residual kept in at least float32; returns (norm(residual) in hidden's dtype, residual)."""
    wide = _at_least_float32(hidden.dtype)
    residual = hidden.to(wide) if residual is None else residual + hidden.to(wide)
    return norm(residual).to(hidden.dtype), residual


class BiMamba(nn.Module):
    """Upstream's ``Mamba`` mixer with ``bimamba_type="v2"``: in_proj -> (x, z); per route a
    causal depthwise conv1d, SiLU, x_proj -> (dt, B, C), a selective scan with skip D; the two
    routes merged in token order, gated by SiLU(z), halved (``if_divide_out``), out_proj.
    The backward route has its own ``A_b_log``, ``conv1d_b``, ``x_proj_b``, ``dt_proj_b``,
    ``D_b``; ``in_proj`` and ``out_proj`` are shared.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        if_divide_out: bool = True,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.d_state = d_state
        self.if_divide_out = if_divide_out
        # Registration order reproduces upstream's state_dict order.
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = _causal_conv(d_inner, d_conv)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        self.A_b_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.conv1d_b = _causal_conv(d_inner, d_conv)
        self.x_proj_b = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj_b = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.D_b = nn.Parameter(torch.empty(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        # Callables(module, VimScanInputs) -> None or a callable given the scan's output; see
        # attention.capture.
        self.scan_recorders: list = []
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """Mamba's initialisation: Δ log-uniform in [dt_min, dt_max], A = -(1..N), D = 1."""
        for dt_proj in (self.dt_proj, self.dt_proj_b):
            d_inner, R = dt_proj.weight.shape
            nn.init.uniform_(dt_proj.weight, -(R**-0.5), R**-0.5)
            dt = torch.exp(
                torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            ).clamp(min=1e-4)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.D.shape[0], 1)
        for A_log, D in ((self.A_log, self.D), (self.A_b_log, self.D_b)):
            A_log.copy_(torch.log(A))
            D.fill_(1.0)

    def scan_inputs(self, hidden: Tensor, routes: Tensor, grid: tuple[int, int]) -> VimScanInputs:
        """What both scans read, from the block's normalised tokens r(Bt, T, C), token order."""
        xz = self.in_proj(hidden).transpose(1, 2)
        x, z = xz.chunk(2, dim=1)
        R, N = self.dt_rank, self.d_state
        conv_weight = torch.stack([self.conv1d.weight, self.conv1d_b.weight])
        conv_bias = torch.stack([self.conv1d.bias, self.conv1d_b.bias])
        u = F.silu(causal_conv1d(along_routes(x, routes), conv_weight, conv_bias))
        x_proj = torch.stack([self.x_proj.weight, self.x_proj_b.weight])
        x_dbl = torch.einsum("bkdt,kcd->bkct", u, x_proj)
        dt_low, B, C = torch.split(x_dbl, [R, N, N], dim=2)
        dt_proj = torch.stack([self.dt_proj.weight, self.dt_proj_b.weight])
        dt_bias = torch.stack([self.dt_proj.bias, self.dt_proj_b.bias])
        delta = F.softplus(torch.einsum("bkrt,kdr->bkdt", dt_low, dt_proj) + dt_bias[..., None])
        return VimScanInputs(
            x=x,
            z=z,
            u=u,
            delta=delta,
            A=-torch.exp(torch.stack([self.A_log, self.A_b_log])),
            B=B.contiguous(),
            C=C.contiguous(),
            Ds=torch.stack([self.D, self.D_b]),
            routes=routes,
            conv_weight=conv_weight,
            conv_bias=conv_bias,
            grid=grid,
            if_divide_out=self.if_divide_out,
        )

    @staticmethod
    def scan(inputs: VimScanInputs) -> Tensor:
        """Both scans, merged in token order: r(Bt, D, T), before the gate and the halving."""
        ys = selective_scan(inputs.u, inputs.delta, inputs.A, inputs.B, inputs.C, inputs.Ds)
        return merge_routes(ys, inputs.routes)

    @staticmethod
    def skip(inputs: VimScanInputs) -> Tensor:
        """What :meth:`scan` gives with every attention term removed (α = 0): each route's
        skip term D_k u_k, merged in token order, r(Bt, D, T)."""
        return merge_routes(inputs.Ds[None, :, :, None] * inputs.u, inputs.routes)

    def forward(self, hidden: Tensor, routes: Tensor, grid: tuple[int, int]) -> Tensor:
        """r(Bt, T, C) -> r(Bt, T, C), token order; ``routes`` r(K, T) from
        :func:`token_routes`."""
        inputs = self.scan_inputs(hidden, routes, grid)
        given = [record(self, inputs) for record in self.scan_recorders]
        y = self.scan(inputs)
        for output in filter(None, given):  # a recorder may also want the scan's output
            output(y)
        y = y * F.silu(inputs.z)
        if self.if_divide_out:
            y = y / 2
        return self.out_proj(y.transpose(1, 2))


def _causal_conv(channels: int, width: int) -> nn.Conv1d:
    # Upstream pads both ends and keeps the first T outputs: a causal conv.
    return nn.Conv1d(channels, channels, width, groups=channels, padding=width - 1, bias=True)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Causal depthwise conv of every route at once: x r(Bt, K, D, T), weight r(K, D, 1, k),
    bias r(K, D) -> r(Bt, K, D, T); step t sees steps t-k+1 .. t of its own route."""
    Bt, K, D, T = x.shape
    width = weight.shape[-1]
    y = F.conv1d(
        x.reshape(Bt, K * D, T),
        weight.reshape(K * D, 1, width),
        None if bias is None else bias.reshape(K * D),
        padding=width - 1,
        groups=K * D,
    )
    return y[..., :T].view(Bt, K, D, T)


class VimBlock(nn.Module):
    """Add + RMSNorm, then the mixer; returns (mixer output, residual) as upstream's Block."""

    def __init__(self, dim: int, norm_eps: float = 1e-5, **mixer_kwargs) -> None:
        super().__init__()
        self.mixer = BiMamba(dim, **mixer_kwargs)
        self.norm = RMSNorm(dim, eps=norm_eps)

    def forward(
        self, hidden: Tensor, residual: Tensor | None, routes: Tensor, grid: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        normed, residual = add_and_norm(hidden, residual, self.norm)
        return self.mixer(normed, routes, grid), residual


class PatchEmbed(nn.Module):
    """Conv patch embedding r(Bt, 3, img) -> r(Bt, P, C), row-major; the image size is fixed by
    the position embedding, as upstream's."""

    def __init__(
        self, img_size: tuple[int, int], patch_size: int, stride: int, in_chans: int, dim: int
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.grid = grid_size(img_size, patch_size, stride)
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=stride)

    def forward(self, images: Tensor) -> Tensor:
        if tuple(images.shape[-2:]) != self.img_size:
            H, W = self.grid
            raise ValueError(
                f"this Vim takes {self.img_size[0]}x{self.img_size[1]} images (its pos_embed "
                f"holds {H}x{W} patches and the CLS token), got {tuple(images.shape)}"
            )
        return self.proj(images).flatten(2).transpose(1, 2)


class Vim(nn.Module):
    """Vision Mamba classifier (upstream ``VisionMamba`` with bimamba v2, ``rms_norm``,
    ``residual_in_fp32``, ``fused_add_norm``, absolute position embedding, middle CLS token,
    ``if_divide_out``): the head reads the CLS token after ``norm_f``.

    Parameters
    ----------
    img_size : int or (int, int)
        Input size; fixed, because ``pos_embed`` has one row per patch.
    patch_size, stride : int
        Patch embedding conv (stride 8 with patch 16: the overlapping ``stride8`` models).
    embed_dim, depth : int
        C and the number of blocks.
    order : str
        Patch order (``mambapanel.orders``): route 0 and its reverse are scanned.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        stride: int | None = None,
        embed_dim: int = 192,
        depth: int = 24,
        d_state: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        norm_eps: float = 1e-5,
        if_divide_out: bool = True,
        order: str = "bidirectional",
    ) -> None:
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.order = order
        self.depths = (depth,)  # one stage: blocks are addressed (0, layer index)
        self.embed_dim = embed_dim
        # Registration order reproduces upstream's state_dict order.
        self.patch_embed = PatchEmbed(
            img_size, patch_size, stride or patch_size, in_chans, embed_dim
        )
        H, W = self.patch_embed.grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, H * W + 1, embed_dim))
        self.head = nn.Linear(embed_dim, num_classes)
        self.layers = nn.ModuleList(
            VimBlock(embed_dim, norm_eps=norm_eps, d_state=d_state, if_divide_out=if_divide_out)
            for _ in range(depth)
        )
        self.norm_f = RMSNorm(embed_dim, eps=norm_eps)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Upstream's: LeCun-normal patch conv, small normal CLS, position and head; zero
        biases; out_proj Kaiming-uniform scaled by 1/sqrt(depth) (GPT-2's residual rule)."""
        proj = self.patch_embed.proj
        nn.init.trunc_normal_(proj.weight, std=proj.weight[0].numel() ** -0.5)
        nn.init.zeros_(proj.bias)
        for p in (self.cls_token, self.pos_embed, self.head.weight):
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.zeros_(self.head.bias)
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            layer.mixer.out_proj.weight /= math.sqrt(len(self.layers))

    @property
    def grid(self) -> tuple[int, int]:
        """The (H, W) patch grid."""
        return self.patch_embed.grid

    def mixer(self, stage: int, block: int) -> BiMamba:
        """The mixer of ``block`` (its layer index); Vim has one stage, 0."""
        if stage != 0:
            raise IndexError(f"stage {stage} out of range: a Vim has one stage, 0")
        if not 0 <= block < len(self.layers):
            raise IndexError(f"block {block} out of range: this Vim has {len(self.layers)}")
        return self.layers[block].mixer

    def tokens(self, images: Tensor) -> Tensor:
        """Patch embeddings and the CLS token with their position embedding: r(Bt, T, C)."""
        patches = self.patch_embed(images)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        index = position_index(patches.shape[1]).to(patches.device)
        return torch.cat([patches, cls], dim=1) + self.pos_embed[:, index]

    def forward_features(self, images: Tensor) -> Tensor:
        """The CLS token after the last block and ``norm_f``: r(Bt, C)."""
        hidden, residual = self.tokens(images), None
        routes = token_routes(self.order, *self.grid).to(hidden.device)
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, routes, self.grid)
        hidden, _ = add_and_norm(hidden, residual, self.norm_f)
        return hidden[:, -1]

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.forward_features(images))

"""Pure-PyTorch VMamba v2 (forward type v05_noz) with a pluggable patch order.

Module names and parameter shapes follow the official classification model so that its
released checkpoints load with ``strict=True``; the scan itself is ``models.scan``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mambapanel import orders
from mambapanel.models.scan import along_routes, merge_routes, selective_scan

Tensor = torch.Tensor


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channel-first map r(B, C, H, W)."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Linear2d(nn.Linear):
    """A 1x1 convolution that stores its weight like ``nn.Linear`` (out, in), as upstream."""

    def forward(self, x: Tensor) -> Tensor:
        # A matmul over the flattened map: faster on the CPU than conv2d(1x1).
        y = torch.matmul(self.weight, x.flatten(2))
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.view(x.shape[0], -1, *x.shape[2:])


@dataclass
class ScanInputs:
    """Everything one SS2D scan consumes; what ``attention.capture`` records.

    Shapes: Bt batch, K routes, D inner channels, N states, L = H*W patches.
    ``delta``, ``B`` and ``C`` are in step order of each route; ``u`` and ``x`` row-major.
    """

    x: Tensor  # r(Bt, D, H, W) in_proj output, before the depthwise conv
    u: Tensor  # r(Bt, D, H, W) after conv and SiLU: what the scan reads
    delta: Tensor  # r(Bt, K, D, L) softplus(dt_proj(dt) + bias)
    A: Tensor  # r(K, D, N) = -exp(A_logs)
    B: Tensor  # r(Bt, K, N, L)
    C: Tensor  # r(Bt, K, N, L)
    Ds: Tensor  # r(K, D) skip weights
    routes: Tensor  # r(K, L) row-major patch index visited at each step
    conv_weight: Tensor  # r(D, 1, k, k) the depthwise conv, for the implicit view
    conv_bias: Tensor | None

    @property
    def grid(self) -> tuple[int, int]:
        return self.u.shape[-2], self.u.shape[-1]


class SS2D(nn.Module):
    """2D selective scan, v05_noz: in_proj -> dwconv -> SiLU -> K scans -> merge -> norm -> out.

    Parameters
    ----------
    d_model : int
        Channels in and out.
    d_state : int
        N, states per channel.
    ssm_ratio : float
        Inner channels D = ssm_ratio * d_model.
    order : str
        Patch order name (``mambapanel.orders``); its number of routes sets K.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = False,
        order: str = "cross",
    ) -> None:
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.order = order
        self.dt_rank, self.d_state = dt_rank, d_state
        K = orders.routes(order, 2, 2).shape[0]
        # Registration order reproduces the upstream state_dict order.
        self.x_proj_weight = nn.Parameter(torch.empty(K, dt_rank + 2 * d_state, d_inner))
        self.A_logs = nn.Parameter(torch.empty(K * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(K * d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, d_inner))
        self.out_norm = LayerNorm2d(d_inner)
        self.in_proj = Linear2d(d_model, d_inner, bias=False)
        self.act = nn.SiLU()
        self.conv2d = nn.Conv2d(
            d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias
        )
        self.out_proj = Linear2d(d_inner, d_model, bias=False)
        # Callables(module, ScanInputs) -> None or a callable given the scan's output; see
        # attention.capture.
        self.scan_recorders: list = []
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """Mamba's initialisation: Δ log-uniform in [dt_min, dt_max], A = -(1..N), D = 1."""
        K, d_inner, R = self.dt_projs_weight.shape
        bound = 1 / math.sqrt(d_inner)
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        nn.init.uniform_(self.dt_projs_weight, -(R**-0.5), R**-0.5)
        dt = torch.exp(
            torch.rand(K, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=1e-4)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(K * d_inner, 1)
        self.A_logs.copy_(torch.log(A))
        self.Ds.fill_(1.0)

    @property
    def num_routes(self) -> int:
        return self.x_proj_weight.shape[0]

    def scan_inputs(self, x: Tensor) -> ScanInputs:
        """Compute what the scan reads from the block's normalised input r(Bt, C, H, W)."""
        H, W = x.shape[-2:]
        routes = orders.routes(self.order, H, W).to(x.device)
        if routes.shape[0] != self.num_routes:
            raise ValueError(
                f"order {self.order!r} gives {routes.shape[0]} routes on a {H}x{W} grid; "
                f"this layer has parameters for {self.num_routes}"
            )
        x = self.in_proj(x)
        u = self.act(self.conv2d(x))
        K, D, R, N = self.num_routes, u.shape[1], self.dt_rank, self.d_state
        us = along_routes(u.flatten(2), routes)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", us, self.x_proj_weight)
        dt_low, B, C = torch.split(x_dbl, [R, N, N], dim=2)
        dt = torch.einsum("bkrl,kdr->bkdl", dt_low, self.dt_projs_weight)
        delta = F.softplus(dt + self.dt_projs_bias[None, :, :, None])
        return ScanInputs(
            x=x,
            u=u,
            delta=delta,
            A=-torch.exp(self.A_logs).view(K, D, N),
            B=B.contiguous(),
            C=C.contiguous(),
            Ds=self.Ds.view(K, D),
            routes=routes,
            conv_weight=self.conv2d.weight,
            conv_bias=self.conv2d.bias,
        )

    @staticmethod
    def scan(inputs: ScanInputs) -> Tensor:
        """Run every route's scan and merge: the output r(Bt, D, H, W) before out_norm."""
        u, routes = inputs.u, inputs.routes
        us = along_routes(u.flatten(2), routes)
        ys = selective_scan(us, inputs.delta, inputs.A, inputs.B, inputs.C, inputs.Ds)
        return merge_routes(ys, routes).view(u.shape)

    @staticmethod
    def skip(inputs: ScanInputs) -> Tensor:
        """What :meth:`scan` gives with every attention term removed (α = 0): the skip term
        (Σ_k D_k) u alone, r(Bt, D, H, W)."""
        return inputs.u * inputs.Ds.sum(0)[None, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        inputs = self.scan_inputs(x)
        given = [record(self, inputs) for record in self.scan_recorders]
        y = self.scan(inputs)
        for output in filter(None, given):  # a recorder may also want the scan's output
            output(y)
        return self.out_proj(self.out_norm(y))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear2d(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear2d(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.p
        return x * keep / (1 - self.p)


class VSSBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        mlp_ratio: float = 4.0,
        **ssm_kwargs,
    ) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.op = SS2D(dim, **ssm_kwargs)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VSSM(nn.Module):
    """VMamba v2 classifier: patch embed (/4), stages of VSS blocks with /2 downsampling.

    Parameters
    ----------
    dims : sequence of int
        Channels per stage.
    depths : sequence of int
        Blocks per stage.
    order : str
        Patch order of every SS2D (``mambapanel.orders``).
    """

    def __init__(
        self,
        dims: tuple[int, ...] = (96, 192, 384, 768),
        depths: tuple[int, ...] = (2, 2, 8, 2),
        num_classes: int = 1000,
        in_chans: int = 3,
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = False,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        order: str = "cross",
    ) -> None:
        super().__init__()
        self.order = order
        self.dims, self.depths = tuple(dims), tuple(depths)
        dims = self.dims
        self.patch_embed = nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, 3, stride=2, padding=1),
            nn.Identity(),
            LayerNorm2d(dims[0] // 2),
            nn.Identity(),
            nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1),
            nn.Identity(),
            LayerNorm2d(dims[0]),
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            blocks = [
                VSSBlock(
                    dims[i],
                    drop_path=rates[sum(depths[:i]) + j],
                    mlp_ratio=mlp_ratio,
                    d_state=d_state,
                    ssm_ratio=ssm_ratio,
                    dt_rank=dt_rank,
                    d_conv=d_conv,
                    conv_bias=conv_bias,
                    order=order,
                )
                for j in range(depth)
            ]
            if i < len(depths) - 1:
                downsample = nn.Sequential(
                    nn.Identity(),
                    nn.Conv2d(dims[i], dims[i + 1], 3, stride=2, padding=1),
                    nn.Identity(),
                    LayerNorm2d(dims[i + 1]),
                )
            else:
                downsample = nn.Identity()
            self.layers.append(
                nn.Sequential(OrderedDict(blocks=nn.Sequential(*blocks), downsample=downsample))
            )
        self.classifier = nn.Sequential(
            OrderedDict(
                norm=LayerNorm2d(dims[-1]),
                permute=nn.Identity(),
                avgpool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(1),
                head=nn.Linear(dims[-1], num_classes),
            )
        )
        self.apply(_init_weights)

    def ss2d(self, stage: int, block: int) -> SS2D:
        """The SS2D of ``stage`` (0-based) and ``block`` within it."""
        if not 0 <= stage < len(self.depths):
            raise IndexError(f"stage {stage} out of range: this model has {len(self.depths)}")
        if not 0 <= block < self.depths[stage]:
            raise IndexError(
                f"block {block} out of range: stage {stage} has {self.depths[stage]} blocks"
            )
        return self.layers[stage].blocks[block].op

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

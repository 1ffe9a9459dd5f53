"""MobileSAM's TinyViT image encoder in plain torch.

A reimplementation of `mobile_sam/modeling/tiny_vit_sam.py` (TinyViT, Microsoft 2022, as modified by
MobileSAM) for inference. Module and attribute names are chosen so that the state dict has exactly the keys,
shapes and persistent/non-persistent buffers of the official `TinyViT`, so an official `mobile_sam.pt`
image-encoder state dict loads with `strict=True`.

Layout: a convolutional patch embedding (stride 4), one convolutional stage of MBConv blocks, then
windowed-attention stages; each stage but the last ends in a `PatchMerging`. As in MobileSAM, the last
merging keeps the resolution, so the encoder's total stride is 16. A neck maps the channels to 256.
Between stages tensors are [B, C, H, W]; inside the attention stages they are channels-last [B, H, W, C].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fpseg_core.modeling.common import LayerNorm2d


class ConvBN(nn.Module):
    """Bias-free Conv2d followed by BatchNorm2d (keys `c`, `bn`), padding `kernel_size // 2`.

    [B, in_chans, H, W] -> [B, out_chans, ceil(H / stride), ceil(W / stride)].
    """

    def __init__(
        self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(
            in_chans, out_chans, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 ConvBNs with a GELU between: [B, in_chans, H, W] -> [B, embed_dim, H/4, W/4].

    The GELU is kept as module `seq.1` so the convolutions sit at keys `seq.0` and `seq.2`.
    """

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, kernel_size=3, stride=2),
            nn.GELU(),
            ConvBN(embed_dim // 2, embed_dim, kernel_size=3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted-residual block (1x1 expand, 3x3 depthwise, 1x1 project, GELU after the residual sum).

    [B, dim, H, W] -> [B, dim, H, W].
    """

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, kernel_size=3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(x + self.conv3(y))


class PatchMerging(nn.Module):
    """1x1 ConvBN, 3x3 depthwise ConvBN with `stride`, 1x1 ConvBN, with GELUs between.

    [B, dim, H, W] -> [B, out_dim, ceil(H / stride), ceil(W / stride)].
    """

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, kernel_size=3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        return self.conv3(x)


class ConvLayer(nn.Module):
    """The convolutional first stage: MBConv blocks, then `downsample`.

    [B, dim, H, W] -> downsample([B, dim, H, W]).
    """

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class Mlp(nn.Module):
    """Pre-norm feed-forward: LayerNorm, Linear, GELU, Linear. [..., dim] -> [..., dim]."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Pre-norm multi-head self-attention over one window of window_size x window_size tokens.

    Each head adds a learned bias indexed by the absolute (row, column) offset between the query and key
    positions: softmax(q k^T / sqrt(head_dim) + bias) v.
    [B, window_size**2, dim] -> [B, window_size**2, dim].
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # One bias per head and offset (|dy|, |dx|), stored at column |dy| * window_size + |dx|.
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        rows = torch.arange(window_size).repeat_interleave(window_size)
        cols = torch.arange(window_size).repeat(window_size)
        offsets = (rows[:, None] - rows[None, :]).abs() * window_size + (cols[:, None] - cols[None, :]).abs()
        self.register_buffer("attention_bias_idxs", offsets, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # The qkv features are laid out per head as [q | k | v].
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3, c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each [B, heads, N, head_dim]
        bias = self.attention_biases[:, self.attention_bias_idxs]  # [heads, N, N]
        # Expanded (a view, no copy) to the full [B, heads, N, N]: with a broadcast mask, PyTorch's CPU SDPA
        # falls back to its unfused math kernel, which made attention ~4x slower.
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(b, -1, -1, -1))
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TinyViTBlock(nn.Module):
    """Windowed attention (residual), depthwise local conv (no residual), MLP (residual).

    The feature map is zero-padded at the bottom/right to a multiple of window_size for the attention (the
    padding tokens take part in it, as in the official model) and cropped back afterwards.
    [B, H, W, dim] -> [B, H, W, dim].
    """

    def __init__(
        self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, kernel_size=local_conv_size, groups=dim)

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """`attn` applied to each window of x: [B, H, W, C] -> [B, H, W, C]."""
        b, h, w, c = x.shape
        ws = self.window_size
        pad_b, pad_r = -h % ws, -w % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        nh, nw = (h + pad_b) // ws, (w + pad_r) // ws
        windows = x.reshape(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        windows = self.attn(windows)
        x = windows.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, nh * ws, nw * ws, c)
        return x[:, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._window_attention(x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """An attention stage: TinyViT blocks, then `downsample` if given (all stages but the last).

    [B, dim, H, W] -> downsample([B, dim, H, W]), or [B, dim, H, W] without one.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """MobileSAM's TinyViT image encoder (four stages). Defaults: TinyViT-5M as used by MobileSAM.

    forward: normalised images [B, in_chans, img_size, img_size] -> embeddings
    [B, 256, img_size / 16, img_size / 16]. The grid is computed from the input's actual size.

    Resolutions: patch_embed 1/4, stage 0 (MBConv) 1/4 -> merge -> stage 1 (attention) 1/8 -> merge ->
    stage 2 1/16 -> merge with stride 1 (MobileSAM's change) -> stage 3 1/16 -> neck (1x1 conv, LayerNorm2d,
    3x3 conv, LayerNorm2d) to 256 channels. num_heads[0] and window_sizes[0] are not used. `norm_head` and
    `head` are the official model's ImageNet classifier, unused here but kept so its checkpoints load
    strictly.
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
    ) -> None:
        """`img_size` is the input side the encoder is used at (read by SAM's pre/post-processing)."""
        super().__init__()
        if not len(embed_dims) == len(depths) == len(num_heads) == len(window_sizes) == 4:
            raise ValueError("embed_dims, depths, num_heads and window_sizes need one entry per stage (4)")
        self.img_size = img_size
        dims = embed_dims

        def attention_stage(i: int, downsample: PatchMerging | None) -> BasicLayer:
            return BasicLayer(
                dims[i], depths[i], num_heads[i], window_sizes[i], mlp_ratio, local_conv_size, downsample
            )

        self.patch_embed = PatchEmbed(in_chans, dims[0])
        self.layers = nn.ModuleList(
            [
                ConvLayer(dims[0], depths[0], mbconv_expand_ratio, PatchMerging(dims[0], dims[1], stride=2)),
                attention_stage(1, PatchMerging(dims[1], dims[2], stride=2)),
                attention_stage(2, PatchMerging(dims[2], dims[3], stride=1)),
                attention_stage(3, None),
            ]
        )
        self.norm_head = nn.LayerNorm(dims[3])
        self.head = nn.Linear(dims[3], num_classes) if num_classes > 0 else nn.Identity()
        self.neck = nn.Sequential(
            nn.Conv2d(dims[3], 256, kernel_size=1, bias=False),
            LayerNorm2d(256),
            nn.Conv2d(256, 256, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(256),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)

"""SAM's ViT image encoder (ViTDet-style backbone), reimplemented in plain torch.

The module tree mirrors the official `segment_anything.modeling.image_encoder.ImageEncoderViT`, so the
state-dict keys and shapes are identical and the official `sam_vit_{b,l,h}` checkpoints load strictly
(the entries under the `image_encoder.` prefix):

    patch_embed.proj.{weight,bias}
    pos_embed                                   (when use_abs_pos)
    blocks.{i}.norm1.{weight,bias}
    blocks.{i}.attn.qkv.{weight,bias}           (bias when qkv_bias)
    blocks.{i}.attn.proj.{weight,bias}
    blocks.{i}.attn.rel_pos_{h,w}               (when use_rel_pos)
    blocks.{i}.norm2.{weight,bias}
    blocks.{i}.mlp.lin{1,2}.{weight,bias}
    neck.0.weight, neck.1.{weight,bias}, neck.2.weight, neck.3.{weight,bias}

Attention runs through `torch.nn.functional.scaled_dot_product_attention`; the decomposed relative
position bias of MViTv2 is passed as an additive float `attn_mask`, which computes
softmax(q k^T * scale + bias) v, the same as the official explicit form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fpseg_core.modeling.common import LayerNorm2d, MLPBlock

__all__ = [
    "VIT_CONFIGS",
    "Attention",
    "Block",
    "ImageEncoderViT",
    "Neck",
    "PatchEmbed",
    "decomposed_rel_pos_bias",
    "get_rel_pos",
    "window_partition",
    "window_unpartition",
]

NormLayer = Callable[[int], nn.Module]
ActLayer = type[nn.Module]


def _sam_layer_norm() -> NormLayer:
    """The LayerNorm SAM's `build_sam.py` uses in the encoder blocks (eps 1e-6)."""
    return partial(nn.LayerNorm, eps=1e-6)


def _official_config(embed_dim: int, depth: int, num_heads: int, global_attn: tuple[int, ...]) -> dict:
    return {
        "img_size": 1024,
        "patch_size": 16,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": 4.0,
        "out_chans": 256,
        "qkv_bias": True,
        "norm_layer": _sam_layer_norm(),
        "use_rel_pos": True,
        "window_size": 14,
        "global_attn_indexes": global_attn,
    }


#: Constructor kwargs of the three released SAM encoders (as in `segment_anything/build_sam.py`).
#: Use as `ImageEncoderViT(**VIT_CONFIGS["vit_b"])`.
VIT_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_b": _official_config(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": _official_config(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": _official_config(1280, 32, 16, (7, 15, 23, 31)),
}


# --------------------------------------------------------------------------------------------------
# Window partitioning
# --------------------------------------------------------------------------------------------------


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a token grid into non-overlapping square windows, zero-padding bottom/right if needed.

    Args:
        x: tokens [B, H, W, C].
        window_size: side of a window, in tokens.

    Returns:
        windows [B * nWh * nWw, window_size, window_size, C] (window-row-major per image), and the
        padded grid size (Hp, Wp), both multiples of `window_size`.
    """
    b, h, w, c = x.shape
    pad_h = (-h) % window_size
    pad_w = (-w) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `window_partition`: reassemble the windows and crop the padding.

    Args:
        windows: [B * nWh * nWw, window_size, window_size, C].
        window_size: side of a window, in tokens.
        pad_hw: padded grid size (Hp, Wp) returned by `window_partition`.
        hw: original grid size (H, W).

    Returns:
        tokens [B, H, W, C].
    """
    hp, wp = pad_hw
    h, w = hw
    n_h, n_w = hp // window_size, wp // window_size
    b = windows.shape[0] // (n_h * n_w)
    x = windows.view(b, n_h, n_w, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


# --------------------------------------------------------------------------------------------------
# Decomposed relative position bias (MViTv2)
# --------------------------------------------------------------------------------------------------


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Gather the relative-position embedding for every (query, key) pair along one axis.

    Args:
        q_size: number of query positions along the axis.
        k_size: number of key positions along the axis.
        rel_pos: learned table [L, C]; linearly resized if L != 2 * max(q_size, k_size) - 1.

    Returns:
        [q_size, k_size, C], entry (i, j) being the embedding of offset i - j (scaled when the sizes
        differ, as in the official code).
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(rel_pos.t().unsqueeze(0), size=max_rel_dist, mode="linear")
        rel_pos = resized.squeeze(0).t()

    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * q_scale
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * k_scale
    relative_coords = (q_coords - k_coords) + (k_size - 1) * k_scale
    return rel_pos[relative_coords.long()]


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """Additive attention bias of decomposed relative positions (MViTv2), for use as an `attn_mask`.

    bias[b, n, (qh, qw), (kh, kw)] = <q[b, n, (qh, qw)], Rh[qh, kh]> + <q[b, n, (qh, qw)], Rw[qw, kw]>,
    with q unscaled, as in the official `add_decomposed_rel_pos`.

    Args:
        q: queries [B, nHeads, q_h * q_w, head_dim].
        rel_pos_h: height table [Lh, head_dim].
        rel_pos_w: width table [Lw, head_dim].
        q_size: query grid (q_h, q_w).
        k_size: key grid (k_h, k_w).

    Returns:
        bias [B, nHeads, q_h * q_w, k_h * k_w], same dtype as q.
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    r_h = get_rel_pos(q_h, k_h, rel_pos_h)  # [q_h, k_h, C]
    r_w = get_rel_pos(q_w, k_w, rel_pos_w)  # [q_w, k_w, C]

    b, n, _, c = q.shape
    r_q = q.reshape(b, n, q_h, q_w, c)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h)  # [B, n, q_h, q_w, k_h]
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w)  # [B, n, q_h, q_w, k_w]
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # [B, n, q_h, q_w, k_h, k_w]
    return bias.reshape(b, n, q_h * q_w, k_h * k_w)


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Image to patch tokens by a strided convolution (key `proj`).

    Input [B, in_chans, H, W]; output [B, H / stride, W / stride, embed_dim] (channels last).
    """

    def __init__(
        self,
        kernel_size: tuple[int, int] = (16, 16),
        stride: tuple[int, int] = (16, 16),
        padding: tuple[int, int] = (0, 0),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_chans, H, W] -> [B, H', W', embed_dim]."""
        return self.proj(x).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head self-attention over a token grid, with optional decomposed relative positions.

    Input/output [B, H, W, dim]. Keys: `qkv`, `proj`, and `rel_pos_h` [2 * input_size[0] - 1, head_dim],
    `rel_pos_w` [2 * input_size[1] - 1, head_dim] when `use_rel_pos`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        """
        Args:
            dim: channels of the tokens.
            num_heads: attention heads (dim must be divisible by it).
            qkv_bias: learnable bias on the q/k/v projection.
            use_rel_pos: add the decomposed relative-position bias to the attention logits.
            rel_pos_zero_init: zero-initialise the relative-position tables (else truncated normal).
            input_size: token grid (H, W) the tables are sized for; required when `use_rel_pos`.
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size must be given when use_rel_pos is True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
            if not rel_pos_zero_init:
                nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(self.rel_pos_w, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, dim] -> [B, H, W, dim]."""
        b, h, w, _ = x.shape
        # [B, H*W, 3, nHeads, head_dim] -> 3 x [B, nHeads, H*W, head_dim]
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)

        bias = None
        if self.use_rel_pos:
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))

        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, h, w, -1)  # [B, H, W, nHeads * head_dim]
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block with windowed (window_size > 0) or global (window_size == 0) attention.

    Input/output [B, H, W, dim]. Keys: `norm1`, `attn`, `norm2`, `mlp`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: NormLayer = nn.LayerNorm,
        act_layer: ActLayer = nn.GELU,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        """
        Args:
            dim: channels of the tokens.
            num_heads: attention heads.
            mlp_ratio: hidden width of the MLP relative to `dim`.
            qkv_bias: learnable bias on the q/k/v projection.
            norm_layer: factory `norm_layer(dim)` for the two norms.
            act_layer: activation class of the MLP.
            use_rel_pos: decomposed relative-position bias in the attention.
            rel_pos_zero_init: zero-initialise the relative-position tables.
            window_size: side of the attention windows; 0 means global attention.
            input_size: token grid (H, W) of the image, sizing the tables of global attention.
        """
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = norm_layer(dim)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=act_layer)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, dim] -> [B, H, W, dim]."""
        y = self.norm1(x)
        if self.window_size > 0:
            hw = (y.shape[1], y.shape[2])
            windows, pad_hw = window_partition(y, self.window_size)
            y = window_unpartition(self.attn(windows), self.window_size, pad_hw, hw)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class Neck(nn.Sequential):
    """Channel reduction after the blocks: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d.

    Input [B, embed_dim, H, W]; output [B, out_chans, H, W]. Keys `0.weight`, `1.{weight,bias}`,
    `2.weight`, `3.{weight,bias}` (the convolutions have no bias), as the official `nn.Sequential`.
    """

    def __init__(self, embed_dim: int, out_chans: int) -> None:
        super().__init__(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )


class ImageEncoderViT(nn.Module):
    """SAM's ViT image encoder.

    Input: normalised, padded images [B, in_chans, img_size, img_size].
    Output: image embeddings [B, out_chans, img_size / patch_size, img_size / patch_size]
    (e.g. [B, 256, 64, 64] for the released 1024-pixel models).
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_layer: NormLayer = nn.LayerNorm,
        act_layer: ActLayer = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        global_attn_indexes: Sequence[int] = (),
    ) -> None:
        """
        Args:
            img_size: side of the (square) input image, in pixels.
            patch_size: side of a patch, in pixels.
            in_chans: channels of the input image.
            embed_dim: token channels.
            depth: number of transformer blocks.
            num_heads: attention heads per block.
            mlp_ratio: hidden width of the MLPs relative to `embed_dim`.
            out_chans: channels of the output embedding.
            qkv_bias: learnable bias on the q/k/v projections.
            norm_layer: factory `norm_layer(dim)` for the block norms (SAM: LayerNorm with eps 1e-6).
            act_layer: activation class of the MLPs.
            use_abs_pos: learned absolute position embedding [1, img_size/patch, img_size/patch, C].
            use_rel_pos: decomposed relative-position bias in the attention.
            rel_pos_zero_init: zero-initialise the relative-position tables.
            window_size: side of the attention windows in the windowed blocks (0: all global).
            global_attn_indexes: indexes of the blocks using global attention.
        """
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size

        self.patch_embed = PatchEmbed(
            kernel_size=(patch_size, patch_size),
            stride=(patch_size, patch_size),
            in_chans=in_chans,
            embed_dim=embed_dim,
        )

        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))

        global_set = set(global_attn_indexes)
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                norm_layer=norm_layer,
                act_layer=act_layer,
                use_rel_pos=use_rel_pos,
                rel_pos_zero_init=rel_pos_zero_init,
                window_size=0 if i in global_set else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )

        self.neck = Neck(embed_dim, out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_chans, img_size, img_size] -> [B, out_chans, img_size / patch, img_size / patch]."""
        x = self.patch_embed(x)  # [B, H, W, C]
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))

"""The FPSeg mask decoder, computed with less work per class; same weights, same logits up to float rounding.

`FPSegModel.decode` is the straightforward computation (it matches the official SAM decoder op for op).
`FastMaskDecoder` computes the same low-resolution logits and is what the backends run and export:

- class-independent work once per image: in the first two-way layer the image side of both cross-attentions
  (keys / values of token->image, queries of image->token) is the same for every class;
- the final token->image attention only for the mask token (the other tokens' outputs are never used), with
  the key / value projections moved to the query side: per head a 1 x 256 vector meets the image tokens
  instead of projecting 4096 image tokens; the key bias adds the same number to every score of a query and
  cancels in the softmax;
- the output upscaling (two 2x2 stride-2 transposed convolutions) as per-pixel matrix products on the
  channels-last image tokens, the hypernetwork dot product applied per sub-pixel, and the pixel shuffle done
  once on the logits instead of twice on the feature maps;
- classes in chunks (`class_chunk`), so no intermediate grows with the number of classes and the same
  buffers are reused from chunk to chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fpseg import FPSegModel
from .transformer import merge_heads, split_heads


class FastMaskDecoder(nn.Module):
    """forward(embedding [1, 256, h, w], prompt_tokens [N, P, 256]) -> low-res logits [1, N, 4h, 4w].

    Equal to `model.decode(embedding, prompt_tokens)` up to float rounding. Holds references to the modules of
    `model` (no copies: the model's state dict and decoder fingerprint are untouched). `class_chunk` classes
    are decoded at a time (None: all at once, as the ONNX export does).
    """

    def __init__(self, model: FPSegModel, class_chunk: int | None = 8) -> None:
        super().__init__()
        if class_chunk is not None and class_chunk < 1:
            raise ValueError(f"class_chunk must be >= 1 or None, got {class_chunk}")
        self.prompt_encoder = model.prompt_encoder
        self.decoder = model.mask_decoder
        self.transformer = model.mask_decoder.transformer
        if not self.transformer.layers[0].skip_first_layer_pe:
            raise ValueError("FastMaskDecoder expects SAM's two-way transformer (first layer skips the PE)")
        self.class_chunk = class_chunk

    def forward(self, embedding: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        if embedding.shape[0] != 1:
            raise ValueError(f"FastMaskDecoder decodes one image at a time, got a batch of {embedding.shape[0]}")
        _, _, h, w = embedding.shape
        src = (embedding + self.prompt_encoder.dense_embedding()).flatten(2).transpose(1, 2)  # [1, hw, C]
        pos = self.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2)  # [1, hw, C]
        context = self._first_layer_image_side(src, pos)
        if self.class_chunk is None:  # one pass over all classes; the export path (no shape-dependent loop)
            return self._decode_classes(src, pos, context, prompt_tokens, h, w).unsqueeze(0)
        step = self.class_chunk
        chunks = [self._decode_classes(src, pos, context, prompt_tokens[i : i + step], h, w)
                  for i in range(0, prompt_tokens.shape[0], step)]
        return torch.cat(chunks).unsqueeze(0)

    def _first_layer_image_side(self, src: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The first layer's projections of the image tokens, identical for every class."""
        layer = self.transformer.layers[0]
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        src_pos = src + pos
        return (
            split_heads(t2i.k_proj(src_pos), t2i.num_heads),
            split_heads(t2i.v_proj(src), t2i.num_heads),
            split_heads(i2t.q_proj(src_pos), i2t.num_heads),
        )

    def _decode_classes(
        self, src: torch.Tensor, pos: torch.Tensor, context: tuple[torch.Tensor, ...],
        prompt_tokens: torch.Tensor, h: int, w: int,
    ) -> torch.Tensor:
        """Logits [n, 4h, 4w] of the n classes whose prompt tokens are given ([n, P, C])."""
        n = prompt_tokens.shape[0]
        mask_token = self.decoder.mask_tokens.weight.unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat([mask_token, prompt_tokens], dim=1)  # [n, T, C]
        queries, keys = self._first_layer(src, tokens, context)
        for layer in self.transformer.layers[1:]:
            queries, keys = self._layer(layer, queries, keys, tokens, pos)
        mask_out = self._final_mask_token(queries[:, :1] + tokens[:, :1], queries[:, 0], keys, pos)
        hyper = self.decoder.output_hypernetworks_mlps[0](mask_out)  # [n, 32]
        return self._upscale_and_dot(keys, hyper, h, w)

    def _first_layer(
        self, src: torch.Tensor, tokens: torch.Tensor, context: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.transformer.layers[0]
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        image_keys, image_values, image_queries = context
        n, t, _ = tokens.shape
        queries = layer.norm1(layer.self_attn(q=tokens, k=tokens, v=tokens))
        # token->image: the image keys / values are shared, so all classes' tokens form one query sequence.
        q = split_heads(t2i.q_proj(queries + tokens).reshape(1, n * t, -1), t2i.num_heads)
        attn = F.scaled_dot_product_attention(q, image_keys, image_values, scale=t2i.scale)
        queries = layer.norm2(queries + t2i.out_proj(merge_heads(attn).reshape(n, t, -1)))
        queries = layer.norm3(queries + layer.mlp(queries))
        # image->token: the image queries are shared, the token keys / values are per class.
        k = split_heads(i2t.k_proj(queries + tokens), i2t.num_heads)
        v = split_heads(i2t.v_proj(queries), i2t.num_heads)
        attn = F.scaled_dot_product_attention(image_queries.expand(n, -1, -1, -1), k, v, scale=i2t.scale)
        keys = layer.norm4(src + i2t.out_proj(merge_heads(attn)))
        return queries, keys

    @staticmethod
    def _layer(
        layer: nn.Module, queries: torch.Tensor, keys: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A later two-way layer (with PE), computing `keys + pos` once instead of twice."""
        q = queries + tokens
        queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
        keys_pos = keys + pos
        queries = layer.norm2(queries + layer.cross_attn_token_to_image(q=queries + tokens, k=keys_pos, v=keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + tokens
        keys = layer.norm4(keys + layer.cross_attn_image_to_token(q=keys_pos, k=q, v=queries))
        return queries, keys

    def _final_mask_token(
        self, query: torch.Tensor, residual: torch.Tensor, keys: torch.Tensor, pos: torch.Tensor
    ) -> torch.Tensor:
        """The final token->image attention for the mask token only: query [n, 1, C] -> [n, C]."""
        attention = self.transformer.final_attn_token_to_image
        heads, c = attention.num_heads, keys.shape[-1]
        d = attention.internal_dim // heads
        q = attention.q_proj(query).view(-1, heads, d)  # [n, heads, d]
        # score = q . (Wk x + bk) = (q Wk) . x + q . bk; the second term is the same for all x.
        q_keys = torch.einsum("nhd,hdc->nhc", q, attention.k_proj.weight.view(heads, d, c))
        scores = (q_keys @ keys.transpose(1, 2) + q_keys @ pos.transpose(1, 2)) * attention.scale
        context = scores.softmax(dim=-1) @ keys  # [n, heads, C]; softmax weights sum to 1, so bv passes
        values = torch.einsum("nhc,hdc->nhd", context, attention.v_proj.weight.view(heads, d, c))
        values = values + attention.v_proj.bias.view(heads, d)
        out = attention.out_proj(values.reshape(-1, heads * d))
        return self.transformer.norm_final_attn(residual + out)

    def _upscale_and_dot(self, keys: torch.Tensor, hyper: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """output_upscaling + hypernetwork dot product on channels-last tokens: [n, hw, C] -> [n, 4h, 4w].

        A 2x2 stride-2 transposed convolution maps each pixel's channels to 2 x 2 sub-pixels independently,
        i.e. a matrix product with the weight laid out [C_in, (a, b, C_out)]. The sub-pixel axes stay
        separate until the end: output row 4y + 2a1 + a2, column 4x + 2b1 + b2.
        """
        conv1, norm, _, conv2, _ = self.decoder.output_upscaling
        n = keys.shape[0]
        c1, c2 = conv1.out_channels, conv2.out_channels
        w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, 4 * c1)
        w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
        x = torch.addmm(conv1.bias.repeat(4), keys.reshape(-1, keys.shape[-1]), w1).view(-1, c1)
        x = F.gelu(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
        x = F.gelu(torch.addmm(conv2.bias.repeat(4), x, w2))  # [n * hw * 4 * 4, c2] rows (y, x, a1, b1, a2, b2)
        logits = torch.bmm(x.view(n, -1, c2), hyper.unsqueeze(2))  # [n, hw * 16, 1]
        logits = logits.view(n, h, w, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
        return logits.reshape(n, 4 * h, 4 * w)

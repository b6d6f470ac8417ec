"""Transformer blocks of the fusion model (4M / TerraMind-B style): pre-norm, LayerNorm without bias, attention and
SwiGLU without biases, ``torch.nn.functional.scaled_dot_product_attention`` with boolean masks (``True``: attend).
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def norm(dim: int) -> nn.LayerNorm:
    """LayerNorm without bias."""
    return nn.LayerNorm(dim, bias=False)


class SwiGLU(nn.Module):
    """``w3(silu(x w1) * x w2)``, no biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w3 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` (self-attention when it is ``None``); ``mask`` broadcasts to
    ``(B, heads, N, M)``, ``True`` where a query may attend a key."""

    def __init__(self, dim: int, heads: int, cross: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.cross = cross
        if cross:
            self.q = nn.Linear(dim, dim, bias=False)
            self.kv = nn.Linear(dim, 2 * dim, bias=False)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def context_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``(B, heads, M, d)`` of ``context`` (cross-attention; computed once, reused by
        :meth:`forward` while the context does not change, as in step-by-step decoding)."""
        k, v = self.kv(context).chunk(2, dim=-1)
        return (rearrange(k, "b n (h d) -> b h n d", h=self.heads), rearrange(v, "b n (h d) -> b h n d", h=self.heads))

    def forward(self, x: Tensor, mask: Tensor, context: Tensor | None = None,
                kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if self.cross:
            q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads)
            k, v = kv if kv is not None else self.context_kv(context)  # type: ignore[arg-type]
        else:
            q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class EncoderBlock(nn.Module):
    """Pre-norm self-attention and SwiGLU."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn = norm(dim), Attention(dim, heads)
        self.norm2, self.mlp = norm(dim), SwiGLU(dim, hidden)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Pre-norm self-attention (among the queries, as ``mask`` allows), cross-attention to the encoder's output,
    SwiGLU."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn = norm(dim), Attention(dim, heads)
        self.norm2, self.context_norm, self.cross = norm(dim), norm(dim), Attention(dim, heads, cross=True)
        self.norm3, self.mlp = norm(dim), SwiGLU(dim, hidden)

    def context_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """The cross-attention's keys and values of ``context`` (see :meth:`Attention.context_kv`)."""
        return self.cross.context_kv(self.context_norm(context))

    def forward(self, x: Tensor, mask: Tensor, context: Tensor, context_mask: Tensor,
                kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask)
        x = x + self.cross(self.norm2(x), context_mask, kv=kv if kv is not None else self.context_kv(context))
        return x + self.mlp(self.norm3(x))


def block_parameters(dim: int, hidden: int, decoder: bool) -> int:
    """Parameters of one block in closed form (for the count the model prints and a test checks)."""
    attention = 4 * dim * dim
    mlp = 3 * dim * hidden
    return (2 * attention + 4 * dim + mlp) if decoder else (attention + 2 * dim + mlp)


def keep_one(mask: Tensor) -> Tensor:
    """``mask`` (``(B, N)``, ``True``: a real key) with the first key switched on in rows that have none, so attention
    over an empty row gives numbers (never read) instead of NaN."""
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        mask = mask.clone()
        mask[empty, 0] = True
    return mask


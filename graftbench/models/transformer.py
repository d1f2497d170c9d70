"""Encoder-decoder Transformer for translation, with a cache for incremental decoding.

Written on ``F.scaled_dot_product_attention`` (flash or memory-efficient kernels on GPU) rather
than ``nn.Transformer`` so that decoding can keep each layer's keys and values. Positions are
sinusoidal (Vaswani et al., 2017: ``PE[p, 2i] = sin(p / 10000^(2i/d))``,
``PE[p, 2i+1] = cos(...)``), computed on the fly for any length, so there is no position table
in the parameters or the state dict. Token embeddings are scaled by ``sqrt(d_model)``.

Masks: the encoder and cross-attention mask padded source positions; the decoder's self-attention
is causal only, which is exact because targets are right-padded (a real token never sees a pad).

Named sizes (``CONFIGS``): ``tiny`` for CPU tests, ``base`` (512/2048/8 heads, as Vaswani et
al.'s base model) and ``paper`` (1024/8192/16 heads, 6+6 layers, untied 32k embeddings and
softmax: the ~375M-parameter model of Agarwal et al., 2020). Pre-norm is the default (the paper's
Lingvo Transformer normalises each sublayer's input and the stack's output); ``norm="post"``
gives the original post-norm layers.

Mixed precision is the caller's ``torch.autocast``; the loss and the decoders' log-softmax run in
float32 whatever the logits' dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graftbench.errors import UserError

__all__ = [
    "CONFIGS",
    "DecoderCache",
    "Transformer",
    "TransformerConfig",
    "label_smoothed_loss",
    "sinusoidal_positions",
    "transformer",
    "transformer_config",
]

Norm = Literal["pre", "post"]
Tie = Literal["none", "decoder", "all"]


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes and options of :class:`Transformer` (special token ids match our SentencePiece)."""

    vocab_size: int = 32000
    d_model: int = 512
    d_ff: int = 2048
    n_heads: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.1
    attention_dropout: float = 0.0
    norm: Norm = "pre"
    # none: source embedding, target embedding and softmax are separate (the paper's 375M);
    # decoder: target embedding = softmax weights; all: the three share one matrix.
    tie_embeddings: Tie = "none"
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise UserError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.norm not in ("pre", "post"):
            raise UserError(f"norm must be 'pre' or 'post', not {self.norm!r}")
        if self.tie_embeddings not in ("none", "decoder", "all"):
            raise UserError(
                f"tie_embeddings must be 'none', 'decoder' or 'all', not {self.tie_embeddings!r}"
            )

    def param_count(self) -> int:
        """Exact number of trainable parameters, counted on the meta device (no memory)."""
        with torch.device("meta"):
            return Transformer(self).param_count()

    def describe(self) -> str:
        """One line for logs, e.g. ``6+6 layers, d_model 1024, d_ff 8192, 16 heads, vocab 32000,
        pre-norm, untied: 375,377,920 parameters``."""
        tie = {"none": "untied", "decoder": "decoder-tied", "all": "all-tied"}[self.tie_embeddings]
        return (
            f"{self.encoder_layers}+{self.decoder_layers} layers, d_model {self.d_model}, "
            f"d_ff {self.d_ff}, {self.n_heads} heads, vocab {self.vocab_size}, {self.norm}-norm, "
            f"{tie}: {self.param_count():,} parameters"
        )


CONFIGS: dict[str, TransformerConfig] = {
    "tiny": TransformerConfig(
        vocab_size=1000, d_model=32, d_ff=64, n_heads=4, encoder_layers=2, decoder_layers=2
    ),
    "base": TransformerConfig(),
    "paper": TransformerConfig(d_model=1024, d_ff=8192, n_heads=16),
}


def transformer_config(name: str, **overrides: Any) -> TransformerConfig:
    """The named configuration with ``overrides`` (e.g. the prepared data's ``vocab_size``)."""
    if name not in CONFIGS:
        raise UserError(f"unknown transformer config {name!r}; choose from {sorted(CONFIGS)}")
    unknown = set(overrides) - set(TransformerConfig.__dataclass_fields__)
    if unknown:
        raise UserError(f"unknown transformer option(s) {sorted(unknown)}")
    return replace(CONFIGS[name], **overrides)


def sinusoidal_positions(positions: Tensor, dim: int) -> Tensor:
    """``(len(positions), dim)`` float32 encodings: sin on even channels, cos on odd ones."""
    if dim % 2:
        raise ValueError(f"sinusoidal positions need an even dimension, got {dim}")
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
        * (-math.log(10000.0) / dim)
    )
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)


class MultiHeadAttention(nn.Module):
    """Attention whose keys and values can be projected once and reused (cache, cross-attn)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, -1).transpose(1, 2)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(batch, heads, length, head_dim)`` keys and values of ``x``."""
        k, v = self.kv_proj(x).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(
        self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False
    ) -> Tensor:
        q = self._heads(self.q_proj(x))
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
        )
        return self.out_proj(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))


class Sublayer(nn.Module):
    """Residual wrapper: ``x + drop(f(norm(x)))`` (pre) or ``norm(x + drop(f(x)))`` (post)."""

    def __init__(self, d_model: int, dropout: float, norm: Norm) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre = norm == "pre"

    def inputs(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.pre else x

    def residual(self, x: Tensor, out: Tensor) -> Tensor:
        x = x + self.dropout(out)
        return x if self.pre else self.norm(x)


class EncoderLayer(nn.Module):
    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(c.d_model, c.n_heads, c.attention_dropout)
        self.ffn = FeedForward(c.d_model, c.d_ff)
        self.attn_sub = Sublayer(c.d_model, c.dropout, c.norm)
        self.ffn_sub = Sublayer(c.d_model, c.dropout, c.norm)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.attn_sub.inputs(x)
        x = self.attn_sub.residual(x, self.attn(h, *self.attn.keys_values(h), mask=mask))
        return self.ffn_sub.residual(x, self.ffn(self.ffn_sub.inputs(x)))


class DecoderLayer(nn.Module):
    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads, c.attention_dropout)
        self.cross_attn = MultiHeadAttention(c.d_model, c.n_heads, c.attention_dropout)
        self.ffn = FeedForward(c.d_model, c.d_ff)
        self.self_sub = Sublayer(c.d_model, c.dropout, c.norm)
        self.cross_sub = Sublayer(c.d_model, c.dropout, c.norm)
        self.ffn_sub = Sublayer(c.d_model, c.dropout, c.norm)

    def forward(
        self,
        x: Tensor,
        cross_kv: tuple[Tensor, Tensor],
        src_mask: Tensor,
        past: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Without ``past``, attend causally within ``x``. With ``past`` (the self-attention
        keys and values of earlier positions), ``x`` is the next position and attends to all of
        them and itself. Returns the output and the keys and values including ``x``'s."""
        h = self.self_sub.inputs(x)
        k, v = self.self_attn.keys_values(h)
        if past is None:
            out = self.self_attn(h, k, v, causal=True)
        else:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
            out = self.self_attn(h, k, v)
        x = self.self_sub.residual(x, out)
        h = self.cross_sub.inputs(x)
        x = self.cross_sub.residual(x, self.cross_attn(h, *cross_kv, mask=src_mask))
        return self.ffn_sub.residual(x, self.ffn(self.ffn_sub.inputs(x))), (k, v)


@dataclass
class DecoderCache:
    """What incremental decoding keeps between steps, for ``batch`` rows.

    ``self_k[i]``/``self_v[i]``: layer i's self-attention keys/values of the positions decoded
    so far, grown by one position per step (the lists are empty before the first step, so the
    cache takes the dtype the projections give, e.g. bf16 under autocast). ``cross_k[i]``/
    ``cross_v[i]``: the encoder memory's keys and values, projected once. ``src_mask``:
    ``(batch, 1, 1, src_len)``, True at real tokens.
    """

    self_k: list[Tensor]
    self_v: list[Tensor]
    cross_k: list[Tensor]
    cross_v: list[Tensor]
    src_mask: Tensor
    length: int = 0

    def reorder(self, index: Tensor, same_sources: bool = False) -> None:
        """Keep rows ``index`` (in that order): beams follow their parents, finished rows go.

        ``same_sources``: every row keeps its source sentence (beams only move among the rows
        of their own sentence, whose cross-attention keys and values are equal), so only the
        self-attention part is reordered.
        """
        parts = [self.self_k, self.self_v]
        if not same_sources:
            parts += [self.cross_k, self.cross_v]
            self.src_mask = self.src_mask.index_select(0, index)
        for tensors in parts:
            tensors[:] = [t.index_select(0, index) for t in tensors]


class Transformer(nn.Module):
    """Encoder-decoder Transformer: ``forward(src, tgt_in)`` gives ``(batch, tgt_len, vocab)``
    logits; ``encode``/``start_cache``/``decode_step`` serve incremental decoding."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = self.config = config
        self.src_embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        self.tgt_embed = (
            self.src_embed
            if c.tie_embeddings == "all"
            else nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        )
        self.output = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings != "none":
            self.output.weight = self.tgt_embed.weight
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.decoder_layers))
        # Pre-norm stacks end with a norm; post-norm layers already end with one.
        final = nn.LayerNorm if c.norm == "pre" else nn.Identity
        self.encoder_norm = final(c.d_model)
        self.decoder_norm = final(c.d_model)
        self.dropout = nn.Dropout(c.dropout)
        self.embed_scale = math.sqrt(c.d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform projections, zero biases, N(0, 1/d_model) embeddings (pad row 0)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        std = self.config.d_model**-0.5
        for embed in {id(m): m for m in (self.src_embed, self.tgt_embed)}.values():
            nn.init.normal_(embed.weight, std=std)
            with torch.no_grad():
                embed.weight[self.config.pad_id].zero_()
        if self.config.tie_embeddings == "none":
            nn.init.normal_(self.output.weight, std=std)

    def param_count(self) -> int:
        """Trainable parameters, each shared tensor counted once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _embed(self, embed: nn.Embedding, tokens: Tensor, start: int = 0) -> Tensor:
        positions = torch.arange(start, start + tokens.size(1), device=tokens.device)
        x = embed(tokens) * self.embed_scale + sinusoidal_positions(positions, self.config.d_model)
        return self.dropout(x)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Memory ``(batch, src_len, d_model)`` and its mask ``(batch, 1, 1, src_len)``."""
        mask = (src != self.config.pad_id)[:, None, None, :]
        x = self._embed(self.src_embed, src)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x), mask

    def decode(
        self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor, last_only: bool = False
    ) -> Tensor:
        """Logits ``(batch, tgt_len, vocab)`` for all target positions at once, or
        ``(batch, vocab)`` for the last one only (decoding without a cache)."""
        x = self._embed(self.tgt_embed, tgt_in)
        for layer in self.decoder:
            x, _ = layer(x, layer.cross_attn.keys_values(memory), src_mask)
        return self.output(self.decoder_norm(x[:, -1] if last_only else x))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)

    def start_cache(self, memory: Tensor, src_mask: Tensor) -> DecoderCache:
        """An empty cache with the cross-attention keys and values of ``memory``."""
        cross = [layer.cross_attn.keys_values(memory) for layer in self.decoder]
        return DecoderCache(
            self_k=[],
            self_v=[],
            cross_k=[k for k, _ in cross],
            cross_v=[v for _, v in cross],
            src_mask=src_mask,
        )

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """Logits ``(batch, vocab)`` for the next position after feeding ``tokens`` ``(batch,)``
        at position ``cache.length``; appends that position to the cache."""
        x = self._embed(self.tgt_embed, tokens[:, None], start=cache.length)
        keys_values = []
        for i, layer in enumerate(self.decoder):
            cross = (cache.cross_k[i], cache.cross_v[i])
            past = (cache.self_k[i], cache.self_v[i]) if cache.length else None
            x, kv = layer(x, cross, cache.src_mask, past)
            keys_values.append(kv)
        cache.self_k = [k for k, _ in keys_values]
        cache.self_v = [v for _, v in keys_values]
        cache.length += 1
        return self.output(self.decoder_norm(x[:, 0]))


def label_smoothed_loss(
    logits: Tensor, target: Tensor, pad_id: int, smoothing: float = 0.1
) -> tuple[Tensor, Tensor]:
    """Summed label-smoothed cross entropy over non-pad targets, and their number.

    Uses ``F.cross_entropy``'s definition: with V classes the target distribution puts
    ``1 - smoothing + smoothing / V`` on the reference token and ``smoothing / V`` on every
    other one. Return the sum (not the mean) so the caller can divide by the token count
    summed over gradient-accumulation micro-batches and data-parallel ranks.
    """
    loss = F.cross_entropy(
        logits.flatten(0, -2).float(),
        target.flatten(),
        ignore_index=pad_id,
        label_smoothing=smoothing,
        reduction="sum",
    )
    return loss, (target != pad_id).sum()


def transformer(size: str = "base", **options: Any) -> Transformer:
    """The Transformer of a named size (``tiny``, ``base``, ``paper``) with ``options``, e.g.
    the prepared data's vocabulary size and special ids (what conf/model/transformer_*.yaml
    instantiate)."""
    return Transformer(transformer_config(size, **options))

"""Greedy and beam-search decoding for :class:`~graftbench.models.transformer.Transformer`,
translation of a prepared split, and sacrebleu BLEU.

Both are batched and, by default, incremental: each step feeds only the newest token and
reuses every layer's cached keys and values, so a sentence of length T costs O(T) decoder
positions instead of O(T^2). ``use_cache=False`` recomputes the whole prefix at every step (the
reference the cache is tested and benchmarked against).

Length limits (per sentence): at most ``max_len_ratio * src_len + max_len_offset`` tokens
before the end-of-sentence token, where ``src_len`` counts the source's non-pad tokens (its EOS
included); at the limit only EOS may follow. No EOS before ``min_len`` tokens. Pad and BOS are
never produced.

Beam search follows fairseq's scheme: every step takes the best ``2 * beam`` extensions of the
live beams; an EOS extension among the best ``beam`` ends a hypothesis, the best ``beam``
non-EOS extensions live on, and a sentence is done once it has ``beam`` finished hypotheses
(or reaches its length limit). Finished hypotheses are ranked by the GNMT length-normalised
score (Wu et al., 2016)

    score(Y) = log P(Y | X) / ((5 + |Y|) / 6) ** length_penalty

where ``|Y|`` counts the generated tokens including the final EOS and ``log P`` is the sum of
the per-token log-probabilities. Finished sentences leave the batch (the cache is shrunk).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from sacrebleu.metrics import BLEU
from torch import Tensor

from graftbench.data.translation import TranslationData, TranslationLoader
from graftbench.models.transformer import DecoderCache, Transformer

__all__ = ["beam_search", "bleu", "gnmt_length_penalty", "greedy_decode", "translate"]


def gnmt_length_penalty(length: int, alpha: float) -> float:
    """GNMT's ``((5 + length) / 6) ** alpha``."""
    return ((5 + length) / 6) ** alpha


@contextmanager
def _inference(model: Transformer) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd, restoring the model's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class _Steps:
    """Next-token log-probabilities for a batch of growing prefixes, cached or recomputed."""

    def __init__(self, model: Transformer, memory: Tensor, src_mask: Tensor, use_cache: bool):
        self.model = model
        self.memory = memory
        self.src_mask = src_mask
        self.cache: DecoderCache | None = model.start_cache(memory, src_mask) if use_cache else None

    def log_probs(self, prefixes: Tensor) -> Tensor:
        if self.cache is not None:
            logits = self.model.decode_step(prefixes[:, -1], self.cache)
        else:
            logits = self.model.decode(prefixes, self.memory, self.src_mask, last_only=True)
        return logits.float().log_softmax(dim=-1)

    def keep(self, rows: Tensor, same_sources: bool = False) -> None:
        """Keep ``rows``; ``same_sources``: each row's source is unchanged (see
        :meth:`DecoderCache.reorder`)."""
        if self.cache is not None:
            self.cache.reorder(rows, same_sources)
        elif not same_sources:
            self.memory = self.memory.index_select(0, rows)
            self.src_mask = self.src_mask.index_select(0, rows)


def _length_limits(
    model: Transformer, src: Tensor, max_len_ratio: float, max_len_offset: int
) -> Tensor:
    src_len = (src != model.config.pad_id).sum(dim=1)
    return (max_len_ratio * src_len + max_len_offset).floor().long()


def _constrain(
    log_probs: Tensor, step: int, limits: Tensor, min_len: int, model: Transformer
) -> Tensor:
    """Forbid pad and BOS always, EOS before ``min_len``, anything but EOS at a row's limit."""
    c = model.config
    log_probs[:, [c.pad_id, c.bos_id]] = -torch.inf
    if step < min_len:
        log_probs[:, c.eos_id] = -torch.inf
    at_limit = step >= limits
    if at_limit.any():
        eos = log_probs[:, c.eos_id].clone()
        log_probs[at_limit] = -torch.inf
        log_probs[:, c.eos_id] = eos
    return log_probs


def greedy_decode(
    model: Transformer,
    src: Tensor,
    *,
    max_len_ratio: float = 1.0,
    max_len_offset: int = 50,
    min_len: int = 0,
    use_cache: bool = True,
) -> list[list[int]]:
    """The most likely next token at every step; token ids per sentence, without EOS."""
    eos = model.config.eos_id
    with _inference(model):
        memory, src_mask = model.encode(src)
        steps = _Steps(model, memory, src_mask, use_cache)
        limits = _length_limits(model, src, max_len_ratio, max_len_offset)
        live = torch.arange(src.size(0), device=src.device)
        prefixes = torch.full((src.size(0), 1), model.config.bos_id, device=src.device)
        outputs: list[list[int]] = [[] for _ in range(src.size(0))]
        step = 0
        while len(live):
            log_probs = _constrain(steps.log_probs(prefixes), step, limits, min_len, model)
            tokens = log_probs.argmax(dim=-1)
            ended = tokens == eos
            if ended.any():
                for sentence, output in zip(
                    live[ended].tolist(), prefixes[ended, 1:].tolist(), strict=True
                ):
                    outputs[sentence] = output
                going = (~ended).nonzero()[:, 0]
                prefixes, tokens = prefixes[going], tokens[going]
                live, limits = live[going], limits[going]
                steps.keep(going)
            prefixes = torch.cat((prefixes, tokens[:, None]), dim=1)
            step += 1
        return outputs


def beam_search(
    model: Transformer,
    src: Tensor,
    *,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    max_len_ratio: float = 1.0,
    max_len_offset: int = 50,
    min_len: int = 0,
    use_cache: bool = True,
) -> list[list[int]]:
    """Best length-normalised hypothesis per sentence (token ids without EOS); see the module
    docstring for the search and the score."""
    c = model.config
    k = beam_size
    if k < 1:
        raise ValueError(f"beam_size must be at least 1, got {k}")
    n = src.size(0)
    device = src.device
    with _inference(model):
        memory, src_mask = model.encode(src)
        steps = _Steps(
            model, memory.repeat_interleave(k, 0), src_mask.repeat_interleave(k, 0), use_cache
        )
        limits = _length_limits(model, src, max_len_ratio, max_len_offset)
        live = torch.arange(n, device=device)  # sentence of each live row block
        prefixes = torch.full((n * k, 1), c.bos_id, device=device)
        # Only the first beam starts alive, so the first step does not pick k copies.
        scores = torch.full((n, k), -torch.inf, device=device)
        scores[:, 0] = 0.0
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
        step = 0
        while len(live):
            m = len(live)
            row_limits = limits.repeat_interleave(k)
            log_probs = _constrain(steps.log_probs(prefixes), step, row_limits, min_len, model)
            candidates = (scores[:, :, None] + log_probs.view(m, k, -1)).view(m, -1)
            top_scores, top = candidates.topk(2 * k, dim=1)
            top_beam, top_token = top // c.vocab_size, top % c.vocab_size
            is_eos = top_token == c.eos_id

            i, j = (is_eos[:, :k] & top_scores[:, :k].isfinite()).nonzero().unbind(1)
            ended = zip(
                live[i].tolist(),
                (top_scores[i, j] / gnmt_length_penalty(step + 1, length_penalty)).tolist(),
                prefixes[i * k + top_beam[i, j], 1:].tolist(),
                strict=True,
            )
            for sentence, score, hypothesis in ended:
                finished[sentence].append((score, hypothesis))

            # The best k non-EOS extensions live on (at most k of the 2k are EOS).
            order = torch.where(is_eos, 2 * k, torch.arange(2 * k, device=device))
            chosen = order.topk(k, dim=1, largest=False).indices
            done = torch.tensor([len(finished[s]) >= k for s in live.tolist()], device=device) | (
                step >= limits
            )
            going = (~done).nonzero()[:, 0]
            chosen = chosen[going]
            parents = (going[:, None] * k + top_beam[going].gather(1, chosen)).view(-1)
            tokens = top_token[going].gather(1, chosen).view(-1, 1)
            prefixes = torch.cat((prefixes[parents], tokens), dim=1)
            scores = top_scores[going].gather(1, chosen)
            live, limits = live[going], limits[going]
            steps.keep(parents, same_sources=len(going) == m)
            step += 1
        return [max(hyps, key=lambda h: h[0])[1] for hyps in finished]


def translate(
    model: Transformer,
    data: TranslationData,
    split: str,
    *,
    indices: Sequence[int] | None = None,
    max_tokens: int = 4096,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    max_len_ratio: float = 1.0,
    max_len_offset: int = 50,
) -> list[str]:
    """Detokenized translations of the sentences ``indices`` (default: all) of ``split``, in
    that order; batched by length on the model's device. ``beam_size=1`` decodes greedily."""
    device = next(model.parameters()).device
    subset = np.arange(len(data.split(split))) if indices is None else np.asarray(indices)
    loader = TranslationLoader(data, split, max_tokens=max_tokens, shuffle=False, subset=subset)
    limits = {"max_len_ratio": max_len_ratio, "max_len_offset": max_len_offset}
    by_index = {}
    for batch in loader.epoch(0):
        src = batch.src.to(device)
        if beam_size == 1:
            outputs = greedy_decode(model, src, **limits)
        else:
            outputs = beam_search(
                model, src, beam_size=beam_size, length_penalty=length_penalty, **limits
            )
        for index, ids in zip(batch.indices.tolist(), outputs, strict=True):
            by_index[index] = data.detokenize(ids)
    return [by_index[i] for i in subset.tolist()]


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """sacrebleu corpus BLEU of detokenized text (13a tokenization, one reference each) and
    sacrebleu's signature string, which pins how the score was computed."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    metric = BLEU()
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return score.score, str(metric.get_signature())

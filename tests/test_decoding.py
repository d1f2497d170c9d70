"""Greedy and beam search against full recomputation and exhaustive search; BLEU end to end."""

from __future__ import annotations

import itertools

import pytest
import sacrebleu
import torch

from graftbench.data.translation import PrepareSettings, TranslationData, TranslationLoader, prepare
from graftbench.models.decoding import (
    beam_search,
    bleu,
    gnmt_length_penalty,
    greedy_decode,
    translate,
)
from graftbench.models.transformer import Transformer, label_smoothed_loss, transformer_config
from tests.text_helpers import write_corpus


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are overhead-bound: a second thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_model(vocab: int = 30, seed: int = 0) -> tuple[Transformer, torch.Tensor]:
    """An untrained float64 model (no near-ties in argmax) and a padded source batch."""
    torch.manual_seed(seed)
    model = Transformer(transformer_config("tiny", vocab_size=vocab, dropout=0.0)).double()
    src = torch.randint(4, vocab, (5, 8))
    src[:, -1] = model.config.eos_id
    src[1, 3:] = model.config.pad_id
    src[3, 6:] = model.config.pad_id
    return model, src


LIMITS = {"max_len_ratio": 1.5, "max_len_offset": 4}


def test_greedy_with_the_cache_equals_full_recomputation():
    model, src = random_model()
    cached = greedy_decode(model, src, **LIMITS)
    assert cached == greedy_decode(model, src, use_cache=False, **LIMITS)
    assert len({len(out) for out in cached}) > 1  # sentences end at different steps


def test_beam_search_with_the_cache_equals_full_recomputation():
    model, src = random_model()
    assert beam_search(model, src, beam_size=4, **LIMITS) == beam_search(
        model, src, beam_size=4, use_cache=False, **LIMITS
    )


def test_beam_of_one_is_greedy():
    for seed in range(3):
        model, src = random_model(seed=seed)
        assert beam_search(model, src, beam_size=1, **LIMITS) == greedy_decode(model, src, **LIMITS)


def test_length_limits_and_min_length():
    model, src = random_model()
    real = (src != model.config.pad_id).sum(1).tolist()
    for out, n in zip(
        greedy_decode(model, src, max_len_ratio=0.5, max_len_offset=1), real, strict=True
    ):
        assert len(out) <= int(0.5 * n + 1)
    forced = beam_search(model, src, beam_size=3, max_len_ratio=0, max_len_offset=9, min_len=9)
    assert [len(out) for out in forced] == [9] * len(src)


def test_gnmt_length_penalty_formula():
    assert gnmt_length_penalty(1, 0.6) == 1.0
    assert gnmt_length_penalty(7, 0.6) == pytest.approx(2**0.6)
    assert gnmt_length_penalty(10, 0.0) == 1.0


def exhaustive_best(model, src, tokens, max_len, alphas):
    """Per alpha, the hypothesis maximising log P(Y) / ((5 + |Y|) / 6)^alpha (|Y| counts EOS)
    over every sequence of up to ``max_len`` tokens from ``tokens``, by teacher forcing."""
    c = model.config
    bodies = [
        list(body)
        for length in range(max_len + 1)
        for body in itertools.product(tokens, repeat=length)
    ]
    # Right-padding is harmless: the decoder is causal, so position t sees only tokens <= t.
    tgt_in = torch.tensor(
        [[c.bos_id, *body] + [c.pad_id] * (max_len - len(body)) for body in bodies]
    )
    log_p = model(src[None].expand(len(bodies), -1), tgt_in).log_softmax(-1)
    totals = [
        sum(log_p[i, t, y].item() for t, y in enumerate([*body, c.eos_id]))
        for i, body in enumerate(bodies)
    ]
    return {
        alpha: max(
            zip(bodies, totals, strict=True),
            key=lambda pair: pair[1] / ((5 + len(pair[0]) + 1) / 6) ** alpha,
        )[0]
        for alpha in alphas
    }


def test_a_wide_beam_finds_the_exhaustive_best_under_the_length_penalty():
    """Vocabulary: pad, unk, bos, eos + 3 tokens; with 128 beams nothing is pruned in 3 steps,
    so beam search must return the exhaustive optimum of the length-normalised score."""
    model, src = random_model(vocab=7, seed=1)
    model.eval()
    src = src[:3]
    alphas = (0.0, 0.6, 3.0)
    with torch.no_grad():
        expected = [exhaustive_best(model, s, [1, 4, 5, 6], 3, alphas) for s in src]
    for alpha in alphas:
        found = beam_search(
            model, src, beam_size=128, length_penalty=alpha, max_len_ratio=0, max_len_offset=3
        )
        assert found == [best[alpha] for best in expected]
    answers = {str([best[alpha] for best in expected]) for alpha in alphas}
    assert len(answers) > 1  # the penalty changes the answer: the test can tell them apart


def test_decoding_restores_the_training_mode():
    model, src = random_model()
    model.train()
    greedy_decode(model, src, **LIMITS)
    assert model.training


def test_bleu_is_sacrebleu_corpus_bleu_with_its_signature():
    hyps = ["le chat mange le pain", "un chien"]
    refs = ["le chat mange du pain", "le chien dort"]
    score, signature = bleu(hyps, refs)
    assert score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert bleu(refs, refs)[0] == pytest.approx(100.0)
    assert signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        bleu(hyps, refs[:1])


def test_prepare_train_decode_bleu_end_to_end(tmp_path):
    """A tiny model learns the toy dictionary: BLEU on held-out sentences goes from ~0 to high."""
    files = write_corpus(tmp_path)
    settings = PrepareSettings(vocab_size=51, max_len=60, max_ratio=3.0, spm_threads=1)
    prepare(tmp_path / "data", files, settings=settings)
    data = TranslationData(tmp_path / "data")
    torch.manual_seed(0)
    config = transformer_config("tiny", vocab_size=data.vocab.size, dropout=0.0)
    model = Transformer(config)
    references = data.references("valid")
    decode = {"beam_size": 4, "max_len_ratio": 1.5, "max_len_offset": 5}
    before, _ = bleu(translate(model, data, "valid", **decode), references)

    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3, betas=(0.9, 0.98), foreach=True)
    loader = TranslationLoader(data, "train", max_tokens=1024, seed=0)
    steps = 0
    for epoch in itertools.count():
        for batch in loader.epoch(epoch):
            loss, count = label_smoothed_loss(model(batch.src, batch.tgt_in), batch.tgt_out, 0)
            optimizer.zero_grad()
            (loss / count).backward()
            optimizer.step()
            steps += 1
        if steps >= 250:
            break
    hypotheses = translate(model, data, "valid", **decode)
    after, _ = bleu(hypotheses, references)
    assert before < 5 and after > 30, (before, after)
    assert translate(model, data, "valid", indices=[7, 2], **decode) == [
        hypotheses[7],
        hypotheses[2],
    ]


def test_decoding_runs_under_bf16_autocast():
    """As on GPU: the cache takes the projections' bf16 while the encoder output is float32."""
    model, src = random_model()
    model = model.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        memory, mask = model.encode(src)
        cache = model.start_cache(memory, mask)
        model.decode_step(torch.full((len(src),), model.config.bos_id), cache)
        model.decode_step(torch.full((len(src),), 5), cache)
        outputs = beam_search(model, src, beam_size=2, **LIMITS)
    assert cache.self_k[0].dtype == torch.bfloat16 and cache.self_k[0].shape[2] == 2
    assert len(outputs) == len(src)

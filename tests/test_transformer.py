"""The Transformer against its definition: sizes, positions, masks, loss, cache, averaging."""

from __future__ import annotations

import math

import pytest
import torch

from graftbench.errors import UserError
from graftbench.models.transformer import (
    CONFIGS,
    Transformer,
    TransformerConfig,
    label_smoothed_loss,
    sinusoidal_positions,
    transformer_config,
)
from graftbench.train.checkpoint import average


def expected_params(c: TransformerConfig) -> int:
    """Parameter count from the architecture: embeddings, attention (4 d x d + biases),
    feed-forward (2 d x d_ff + biases), LayerNorms (2 d each)."""
    d, f, v = c.d_model, c.d_ff, c.vocab_size
    attention = 4 * d * d + 4 * d
    ffn = 2 * d * f + f + d
    norm = 2 * d
    encoder = c.encoder_layers * (attention + ffn + 2 * norm)
    decoder = c.decoder_layers * (2 * attention + ffn + 3 * norm)
    final = 2 * norm if c.norm == "pre" else 0
    matrices = {"none": 3, "decoder": 2, "all": 1}[c.tie_embeddings]
    return matrices * v * d + encoder + decoder + final


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("tie", ["none", "decoder", "all"])
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_parameter_count_matches_the_architecture(name, tie, norm):
    config = transformer_config(name, tie_embeddings=tie, norm=norm)
    assert config.param_count() == expected_params(config)


def test_paper_config_is_the_375m_model_and_tiny_builds_for_real():
    paper = CONFIGS["paper"]
    assert (paper.d_model, paper.d_ff, paper.n_heads, paper.vocab_size) == (1024, 8192, 16, 32000)
    assert paper.param_count() == 375_377_920
    assert paper.describe() == (
        "6+6 layers, d_model 1024, d_ff 8192, 16 heads, vocab 32000, pre-norm, untied: "
        "375,377,920 parameters"
    )
    tiny = transformer_config("tiny", vocab_size=60)
    assert Transformer(tiny).param_count() == expected_params(tiny)


def test_tied_embeddings_share_one_tensor():
    model = Transformer(transformer_config("tiny", tie_embeddings="all"))
    assert model.src_embed.weight is model.tgt_embed.weight is model.output.weight
    model = Transformer(transformer_config("tiny", tie_embeddings="decoder"))
    assert model.tgt_embed.weight is model.output.weight
    assert model.src_embed.weight is not model.tgt_embed.weight


def test_config_mistakes_are_user_errors():
    with pytest.raises(UserError, match="unknown transformer config 'huge'"):
        transformer_config("huge")
    with pytest.raises(UserError, match="unknown transformer option"):
        transformer_config("tiny", layers=3)
    with pytest.raises(UserError, match="not divisible"):
        transformer_config("tiny", n_heads=5)
    with pytest.raises(UserError, match="tie_embeddings"):
        transformer_config("tiny", tie_embeddings="encoder")


def test_sinusoidal_positions_follow_the_formula():
    dim = 6
    table = sinusoidal_positions(torch.arange(5), dim)
    for p in range(5):
        for i in range(dim // 2):
            angle = p / 10000 ** (2 * i / dim)
            assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def model_and_batch(norm: str = "pre", seed: int = 0):
    torch.manual_seed(seed)
    config = transformer_config("tiny", vocab_size=40, dropout=0.0, norm=norm)
    model = Transformer(config).double().eval()
    src = torch.randint(4, 40, (3, 7))
    src[0, 4:] = config.pad_id
    tgt = torch.randint(4, 40, (3, 6))
    tgt[:, 0] = config.bos_id
    return model, src, tgt


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_decoder_is_causal_and_source_padding_is_invisible(norm):
    model, src, tgt = model_and_batch(norm)
    logits = model(src, tgt)
    changed = tgt.clone()
    changed[:, 4:] = 5
    assert torch.allclose(model(src, changed)[:, :4], logits[:, :4], atol=1e-12)
    assert not torch.allclose(model(src, changed)[:, 4:], logits[:, 4:])
    # The first sentence alone (4 real tokens) gives what it gave padded in the batch.
    alone = model(src[:1, :4], tgt[:1])
    assert torch.allclose(alone, logits[:1], atol=1e-12)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_incremental_decoding_gives_the_full_forward_logits(norm):
    model, src, tgt = model_and_batch(norm)
    full = model(src, tgt)
    memory, mask = model.encode(src)
    cache = model.start_cache(memory, mask)
    steps = torch.stack([model.decode_step(tgt[:, t], cache) for t in range(tgt.size(1))], 1)
    assert cache.length == tgt.size(1) and cache.self_k[0].shape[2] == tgt.size(1)
    assert torch.allclose(steps, full, atol=1e-10)


def test_reordering_the_cache_follows_rows():
    model, src, tgt = model_and_batch()
    memory, mask = model.encode(src)
    cache = model.start_cache(memory, mask)
    for t in range(3):
        model.decode_step(tgt[:, t], cache)
    order = torch.tensor([2, 2, 0])  # a beam duplicated, one dropped
    cache.reorder(order)
    reordered = model(src[order], tgt[order])
    for t in range(3, tgt.size(1)):
        step = model.decode_step(tgt[order, t], cache)
        assert torch.allclose(step, reordered[:, t], atol=1e-10)


def test_label_smoothed_loss_is_the_smoothed_cross_entropy_over_real_tokens():
    torch.manual_seed(0)
    vocab, eps = 7, 0.1
    logits = torch.randn(2, 4, vocab, dtype=torch.float64)
    target = torch.tensor([[5, 6, 3, 0], [4, 3, 0, 0]])
    loss, count = label_smoothed_loss(logits, target, pad_id=0, smoothing=eps)
    expected = 0.0
    for b in range(2):
        for t in range(4):
            if target[b, t] == 0:
                continue
            log_p = torch.log_softmax(logits[b, t], dim=-1)
            smoothed = torch.full((vocab,), eps / vocab, dtype=torch.float64)
            smoothed[target[b, t]] += 1 - eps
            expected += -(smoothed * log_p).sum().item()
    assert count.item() == 5
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_bf16_autocast_runs_and_the_loss_stays_float32():
    model, src, tgt = model_and_batch()
    model = model.float().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src, tgt)
        loss, _ = label_smoothed_loss(logits, tgt, pad_id=0)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = Transformer(transformer_config("tiny", vocab_size=40, dropout=0.3))
    src, tgt = torch.randint(4, 40, (2, 5)), torch.randint(4, 40, (2, 5))
    assert not torch.equal(model(src, tgt), model(src, tgt))
    model.eval()
    assert torch.equal(model(src, tgt), model(src, tgt))


def test_averaging_checkpoints_means_floats_and_keeps_the_last_integers(tmp_path):
    paths = []
    states = []
    for i in range(3):
        state = {"w": torch.randn(3, 2), "h": torch.randn(4).half(), "n": torch.tensor(i)}
        states.append(state)
        paths.append(tmp_path / f"ckpt{i}.pt")
        torch.save({"model": state, "step": i}, paths[-1])
    averaged = average(paths)
    assert torch.allclose(averaged["w"], sum(s["w"] for s in states) / 3, atol=1e-6)
    assert averaged["h"].dtype == torch.float16
    assert torch.allclose(averaged["h"].float(), sum(s["h"].float() for s in states) / 3, atol=1e-3)
    assert averaged["n"].item() == 2
    torch.save({"w": torch.zeros(3, 2)}, tmp_path / "bare.pt")
    assert torch.equal(average([tmp_path / "bare.pt"], key=None)["w"], torch.zeros(3, 2))
    torch.save({"model": {"w": torch.zeros(3, 2)}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="other tensors"):
        average([*paths, tmp_path / "other.pt"])
    with pytest.raises(UserError, match="does not exist"):
        average([tmp_path / "missing.pt"])

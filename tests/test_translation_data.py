"""Preparing parallel text into token arrays, and batching it by token budget."""

from __future__ import annotations

import hashlib
import itertools
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

from graftbench.data.translation import (
    BatchSampler,
    PrepareSettings,
    TranslationData,
    TranslationLoader,
    Vocab,
    collate,
    prepare,
    prepare_from_hf,
)
from graftbench.errors import UserError
from tests.text_helpers import write_corpus

SETTINGS = PrepareSettings(vocab_size=51, max_len=60, max_ratio=3.0, spm_threads=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[dict[str, tuple[Path, Path]], Path, dict]:
    root = tmp_path_factory.mktemp("corpus")
    files = write_corpus(root)
    manifest = prepare(root / "prepared", files, settings=SETTINGS)
    return files, root / "prepared", manifest


def kept(src_len: int, tgt_len: int) -> bool:
    """SETTINGS' length filters, from their definition."""
    return max(src_len, tgt_len) <= 60 and max(src_len, tgt_len) <= 3 * min(src_len, tgt_len)


def lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").split("\n")[:-1]]


def test_prepared_arrays_hold_the_sentencepiece_encoding_of_the_kept_pairs(corpus):
    files, out, manifest = corpus
    processor = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    data = TranslationData(out)
    for split, (src_path, tgt_path) in files.items():
        src, tgt = lines(src_path), lines(tgt_path)
        encoded = list(zip(processor.encode(src), processor.encode(tgt), strict=True))
        if split == "train":  # the filters, from their definitions
            encoded = [(s, t) for s, t in encoded if s and t and kept(len(s), len(t))]
        pairs = data.split(split)
        assert len(pairs) == len(encoded) == manifest["splits"][split]["sentences"]
        for i, (s, t) in enumerate(encoded):
            assert pairs.src[i].tolist() == s and pairs.tgt[i].tolist() == t
        if split != "train":
            assert data.references(split) == tgt and data.texts(split, "en") == src
    assert data.tokenizer.get_piece_size() == manifest["vocab"]["size"] == 51
    assert np.dtype(manifest["dtype"]) == np.uint16 == pairs.src.tokens.dtype
    specials = [processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id()]
    assert specials == [0, 1, 2, 3]


def test_manifest_records_schema_sources_settings_and_output_hashes(corpus):
    files, out, manifest = corpus
    assert manifest["schema_version"] == 1 and manifest["languages"] == ["en", "fr"]
    assert manifest["settings"]["vocab_size"] == 51 and manifest["settings"]["max_ratio"] == 3.0
    assert manifest["vocab"]["spm_model"] == "spm.model"
    for split, (src, tgt) in files.items():
        for lang, path in (("en", src), ("fr", tgt)):
            source = manifest["sources"][split][lang]
            assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "manifest.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    on_disk = {p.name for p in out.iterdir()} - {"manifest.json"}
    assert set(manifest["outputs"]) == on_disk
    for name, digest in manifest["outputs"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def test_training_filters_drop_empty_long_and_unbalanced_pairs(corpus):
    _, _, manifest = corpus
    dropped = manifest["splits"]["train"]["dropped"]
    assert dropped == {"empty": 1, "too_long": 1, "ratio": 1}  # the planted BAD_PAIRS
    assert "dropped" not in manifest["splits"]["valid"]  # evaluation keeps every line


def test_preparing_again_is_a_no_op_and_deterministic_elsewhere(corpus, tmp_path):
    files, out, manifest = corpus
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert prepare(out, files, settings=SETTINGS) == manifest
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    again = prepare(tmp_path / "again", files, settings=SETTINGS)
    assert again["outputs"] == manifest["outputs"]


def test_preparing_other_data_into_a_used_directory_is_refused(corpus, tmp_path):
    files, out, _ = corpus
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = PrepareSettings(vocab_size=50, max_len=60, max_ratio=3.0, spm_threads=1)
    with pytest.raises(UserError, match=r"already holds data prepared with other settings \(vocab"):
        prepare(out, files, settings=other)
    with pytest.raises(UserError, match="already holds data prepared with other sources"):
        prepare(out, {"train": files["train"]}, settings=SETTINGS)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already holds other files"):
        prepare(tmp_path / "busy", files, settings=SETTINGS)
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


def test_bad_inputs_are_user_errors_and_leave_nothing_behind(tmp_path):
    files = write_corpus(tmp_path, n_train=50, n_eval=5)
    misaligned = tmp_path / "short.fr"
    misaligned.write_text("le chat\n")
    cases = [
        ({"train": (files["train"][0], misaligned)}, SETTINGS, "are not aligned"),
        ({"train": (files["train"][0], tmp_path / "nope")}, SETTINGS, "does not exist"),
        ({"valid": files["valid"]}, SETTINGS, "'train' split is required"),
        (files, PrepareSettings(vocab_size=5000, spm_threads=1), "Vocabulary size too high"),
    ]
    for split_files, settings, message in cases:
        with pytest.raises(UserError, match=message):
            prepare(tmp_path / "out", split_files, settings=settings)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_hugging_face_path_without_datasets_says_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails even where installed
    with pytest.raises(UserError, match="pip install datasets"):
        prepare_from_hf(tmp_path / "wmt14")


def test_data_reads_both_directions_and_refuses_unprepared_directories(corpus, tmp_path):
    _, out, _ = corpus
    forward, backward = TranslationData(out), TranslationData(out, src_lang="fr")
    assert backward.tgt_lang == "en"
    assert backward.split("valid").src[3].tolist() == forward.split("valid").tgt[3].tolist()
    assert backward.references("valid") == forward.texts("valid", "en")
    with pytest.raises(UserError, match=r"no manifest\.json"):
        TranslationData(tmp_path)
    with pytest.raises(UserError, match="not en-de"):
        TranslationData(out, src_lang="en", tgt_lang="de")
    with pytest.raises(UserError, match="no 'dev' split"):
        forward.split("dev")


# -- batching ---------------------------------------------------------------------------------
def reference_pack(lengths: np.ndarray, max_tokens: int | None, max_sentences: int | None):
    """Batch sizes of greedy packing written the slow way: add sentences (shortest first)
    while count * longest fits."""
    sizes, count, longest = [], 0, 0
    for length in sorted(lengths.tolist()):
        fits_tokens = max_tokens is None or (count + 1) * max(longest, length) <= max_tokens
        fits_count = max_sentences is None or count + 1 <= max_sentences
        if count and not (fits_tokens and fits_count):
            sizes.append(count)
            count, longest = 0, 0
        count, longest = count + 1, max(longest, length)
    return [*sizes, count] if count else sizes


@pytest.fixture
def lengths() -> np.ndarray:
    return np.random.default_rng(0).integers(2, 60, size=1000)


@pytest.mark.parametrize(
    ("max_tokens", "max_sentences"), [(256, None), (None, 16), (300, 12), (1000, 384)]
)
def test_batches_fit_the_budget_cover_the_epoch_and_pack_greedily(
    lengths, max_tokens, max_sentences
):
    sampler = BatchSampler(lengths, max_tokens=max_tokens, max_sentences=max_sentences, seed=1)
    batches = list(sampler.epoch(0))
    for batch in batches:
        if max_tokens is not None:
            assert len(batch) * lengths[batch].max() <= max_tokens
        if max_sentences is not None:
            assert len(batch) <= max_sentences
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    expected = reference_pack(lengths, max_tokens, max_sentences)
    assert sorted(len(b) for b in batches) == sorted(expected) and len(sampler) == len(expected)


def test_epochs_shuffle_from_seed_and_epoch_and_resume_mid_epoch(lengths):
    sampler = BatchSampler(lengths, max_tokens=256, seed=7)
    first = [b.tolist() for b in sampler.epoch(3)]
    assert first == [b.tolist() for b in BatchSampler(lengths, max_tokens=256, seed=7).epoch(3)]
    assert first != [b.tolist() for b in sampler.epoch(4)]
    assert first != [b.tolist() for b in BatchSampler(lengths, max_tokens=256, seed=8).epoch(3)]
    assert [b.tolist() for b in sampler.epoch(3, start=5)] == first[5:]
    unshuffled = BatchSampler(lengths, max_tokens=256, shuffle=False)
    assert [b.tolist() for b in unshuffled.epoch(0)] == [b.tolist() for b in unshuffled.epoch(1)]


def test_ranks_get_equal_disjoint_shares_and_evaluation_sees_everything(lengths):
    total = len(BatchSampler(lengths, max_tokens=256))
    world = 3
    assert total % world  # the remainder case is the interesting one
    shards = [
        list(BatchSampler(lengths, max_tokens=256, seed=2, rank=r, world_size=world).epoch(5))
        for r in range(world)
    ]
    assert [len(s) for s in shards] == [total // world] * world
    seen = np.concatenate([np.concatenate(s) for s in shards])
    assert len(set(seen.tolist())) == len(seen)  # disjoint
    evaluation = [
        list(
            BatchSampler(lengths, max_tokens=256, shuffle=False, rank=r, world_size=world).epoch(0)
        )
        for r in range(world)
    ]
    everything = np.concatenate(list(itertools.chain.from_iterable(evaluation)))
    assert sorted(everything.tolist()) == list(range(len(lengths)))


def test_a_sentence_over_the_budget_gets_a_batch_of_its_own():
    batches = list(BatchSampler(np.array([5, 5, 50, 5]), max_tokens=20, shuffle=False).epoch(0))
    assert [b.tolist() for b in batches] == [[0, 1, 3], [2]]


def test_collate_adds_eos_to_source_bos_to_decoder_input_and_pads(corpus):
    _, out, _ = corpus
    data = TranslationData(out)
    split = data.split("valid")
    batch = collate(split, np.array([4, 0]), Vocab(size=51))
    s4, s0 = split.src[4].tolist(), split.src[0].tolist()
    t4, t0 = split.tgt[4].tolist(), split.tgt[0].tolist()
    width = max(len(s4), len(s0)) + 1
    assert batch.src.tolist() == [
        s4 + [3] + [0] * (width - len(s4) - 1),
        s0 + [3] + [0] * (width - len(s0) - 1),
    ]
    width = max(len(t4), len(t0)) + 1
    assert batch.tgt_in.tolist() == [
        [2] + t4 + [0] * (width - len(t4) - 1),
        [2] + t0 + [0] * (width - len(t0) - 1),
    ]
    assert batch.tgt_out.tolist() == [
        t4 + [3] + [0] * (width - len(t4) - 1),
        t0 + [3] + [0] * (width - len(t0) - 1),
    ]
    assert batch.src.dtype == torch.int64 and batch.indices.tolist() == [4, 0]
    assert batch.n_target_tokens == len(t4) + len(t0) + 2


def test_loader_batches_a_subset_within_max_tokens(corpus):
    _, out, _ = corpus
    data = TranslationData(out)
    loader = TranslationLoader(data, "train", max_tokens=200, seed=0, subset=np.arange(100, 300))
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader)
    assert sorted(torch.cat([b.indices for b in batches]).tolist()) == list(range(100, 300))
    for b in batches:
        assert b.src.numel() <= 200 and b.tgt_in.numel() <= 200
        assert b.n_target_tokens == int((b.tgt_out != 0).sum())

"""Parallel text for translation: prepare once into token arrays, then batch by token budget.

A prepared directory holds::

    manifest.json            schema_version 1; languages, settings, sources (sha256), sizes,
                             vocabulary, sha256 of every output file
    spm.model                shared SentencePiece model (both languages), pad/unk/bos/eos = 0-3
    <split>.<lang>.bin       all sentences' token ids, concatenated (uint16 below 65,536 pieces)
    <split>.<lang>.idx       int64 offsets into the .bin, one more than there are sentences
    <split>.<lang>.txt       evaluation splits only: the stripped raw text (BLEU references)

Only the training split is filtered (empty side, a side over ``max_len`` pieces, a piece-count
ratio over ``max_ratio``); evaluation splits keep every line so hypotheses stay aligned with
their references. Preparing is deterministic for given inputs and settings; preparing again
into a directory with a matching manifest is a no-op, and a directory holding anything else is
never overwritten. The directory appears whole or not at all (built beside it, then renamed).

Batching (:class:`BatchSampler`): sentences are sorted by length (ties in an order drawn from
``(seed, epoch)``) and packed greedily so that ``sentences * max(src_len, tgt_len)`` stays
within ``max_tokens`` (and the count within ``max_sentences``); lengths include the EOS/BOS that
:func:`collate` adds. The batch order is shuffled from ``(seed, epoch)`` and dealt round-robin to
the data-parallel ranks; a training epoch drops the last ``len % world_size`` batches of its
shuffled order so that every rank runs the same number of steps. An epoch can be resumed from
any batch index.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch
from torch import Tensor

from graftbench.errors import UserError
from graftbench.rundir import write_text_atomic

__all__ = [
    "BatchSampler",
    "ParallelSplit",
    "PrepareSettings",
    "TokenArray",
    "TranslationBatch",
    "TranslationData",
    "TranslationLoader",
    "Vocab",
    "collate",
    "prepare",
    "prepare_from_hf",
]

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1  # its own version: prepared data outlives run-directory formats
SPM_MODEL = "spm.model"
TRAIN = "train"
PAD, UNK, BOS, EOS = 0, 1, 2, 3
_CHUNK = 50_000  # lines encoded per SentencePiece call
_WMT14_SPLITS = {"train": "train", "valid": "validation", "test": "test"}  # newstest2013/2014


@dataclass(frozen=True)
class PrepareSettings:
    """Everything besides the input text that decides the prepared arrays."""

    vocab_size: int = 32000
    model_type: str = "unigram"  # SentencePiece: unigram | bpe | char | word
    character_coverage: float = 0.9999
    input_sentence_size: int = 2_000_000  # lines sampled for SentencePiece training; 0: all
    seed: int = 0
    spm_threads: int = 8  # part of the settings: SentencePiece records it in its model
    max_len: int | None = 250  # pieces per side (training split)
    max_ratio: float | None = 1.5  # longer side / shorter side, in pieces (training split)


@dataclass(frozen=True)
class Vocab:
    """Size and special ids of the shared SentencePiece vocabulary."""

    size: int
    pad_id: int = PAD
    unk_id: int = UNK
    bos_id: int = BOS
    eos_id: int = EOS


# -- preparation ------------------------------------------------------------------------------
def prepare(
    out_dir: Path,
    files: Mapping[str, tuple[Path, Path]],
    *,
    src_lang: str = "en",
    tgt_lang: str = "fr",
    settings: PrepareSettings = PrepareSettings(),
) -> dict[str, Any]:
    """Prepare aligned text files (one sentence per line) into ``out_dir``; returns the manifest.

    ``files`` maps split names to ``(source file, target file)``; ``"train"`` is required and
    trains the SentencePiece model. Typical splits: train, valid (newstest2013), test
    (newstest2014).
    """
    return _prepare(Path(out_dir), files, src_lang, tgt_lang, settings, origin={"kind": "files"})


def prepare_from_hf(
    out_dir: Path,
    *,
    dataset: str = "wmt/wmt14",
    config: str = "fr-en",
    splits: Mapping[str, str] = _WMT14_SPLITS,
    src_lang: str = "en",
    tgt_lang: str = "fr",
    settings: PrepareSettings = PrepareSettings(),
) -> dict[str, Any]:
    """Download a Hugging Face translation dataset (WMT14 fr-en by default: validation is
    newstest2013, test newstest2014) and prepare it like :func:`prepare`. ``splits`` maps our
    split names to the dataset's."""
    out_dir = Path(out_dir)
    origin = {"kind": "huggingface", "dataset": dataset, "config": config, "splits": dict(splits)}
    existing = _reuse_or_refuse(out_dir, _identity(src_lang, tgt_lang, settings, origin))
    if existing is not None:
        return existing
    try:
        import datasets
    except ImportError:
        raise UserError(
            "downloading WMT14 needs the Hugging Face `datasets` package and network access: "
            "pip install datasets, or pass local aligned text files instead"
        ) from None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    raw = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.raw-"))
    try:
        files = {}
        for name, hf_split in splits.items():
            try:
                rows = datasets.load_dataset(dataset, config, split=hf_split)
            except Exception as err:  # datasets raises many types when offline or misnamed
                raise UserError(
                    f"could not load {dataset} {config} split {hf_split!r} (no network?): "
                    f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                ) from None
            files[name] = (raw / f"{name}.{src_lang}", raw / f"{name}.{tgt_lang}")
            with (
                open(files[name][0], "w", encoding="utf-8") as src,
                open(files[name][1], "w", encoding="utf-8") as tgt,
            ):
                for row in rows:
                    pair = row["translation"]
                    src.write(_one_line(pair[src_lang]) + "\n")
                    tgt.write(_one_line(pair[tgt_lang]) + "\n")
        return _prepare(out_dir, files, src_lang, tgt_lang, settings, origin)
    finally:
        shutil.rmtree(raw, ignore_errors=True)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _identity(
    src_lang: str, tgt_lang: str, settings: PrepareSettings, origin: dict[str, Any]
) -> dict[str, Any]:
    return {"languages": [src_lang, tgt_lang], "settings": asdict(settings), "origin": origin}


def _existing_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _reuse_or_refuse(out_dir: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest if ``out_dir`` already holds this very data (preparing again is a no-op),
    None if ``out_dir`` is absent or empty; anything else is refused, never overwritten."""
    existing = _existing_manifest(out_dir)
    if existing is not None:
        found = existing | {"sources": _hashes(existing.get("sources", {}))}
        differ = [key for key, value in identity.items() if found.get(key) != value]
        if not differ:
            return existing
        if "settings" in differ:
            names = [k for k, v in identity["settings"].items() if found["settings"].get(k) != v]
            differ[differ.index("settings")] = f"settings ({', '.join(names)})"
        what = f"data prepared with other {' and '.join(differ)}"
    elif out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        what = "other files"
    else:
        return None
    raise UserError(
        f"{out_dir} already holds {what}; choose another directory or remove it "
        "(prepared data is never overwritten)"
    )


def _prepare(
    out_dir: Path,
    files: Mapping[str, tuple[Path, Path]],
    src_lang: str,
    tgt_lang: str,
    settings: PrepareSettings,
    origin: dict[str, Any],
) -> dict[str, Any]:
    if TRAIN not in files:
        raise UserError(f"a {TRAIN!r} split is required to train the vocabulary")
    if src_lang == tgt_lang:
        raise UserError(f"source and target language are both {src_lang!r}")
    for name, pair in files.items():
        if not name.isidentifier():
            raise UserError(f"split name {name!r} must be a plain word (letters, digits, _)")
        for path in pair:
            if not Path(path).is_file():
                raise UserError(f"{name} text file {path} does not exist")
    sources = {
        name: {
            lang: {"path": str(path), **_scan(Path(path))}
            for lang, path in zip((src_lang, tgt_lang), pair, strict=True)
        }
        for name, pair in files.items()
    }
    for name, pair in sources.items():
        src, tgt = pair.values()
        if src["lines"] != tgt["lines"]:
            raise UserError(
                f"{name} files {src['path']} ({src['lines']} lines) and {tgt['path']} "
                f"({tgt['lines']} lines) are not aligned"
            )
    identity = _identity(src_lang, tgt_lang, settings, origin) | {"sources": _hashes(sources)}
    existing = _reuse_or_refuse(out_dir, identity)
    if existing is not None:
        return existing

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        train_src, train_tgt = files[TRAIN]
        vocab_size = _train_sentencepiece([Path(train_src), Path(train_tgt)], build, settings)
        processor = spm.SentencePieceProcessor(model_file=str(build / SPM_MODEL))
        dtype = np.dtype(np.uint16 if vocab_size < 2**16 else np.int32)
        splits = {}
        for name, (src, tgt) in files.items():
            splits[name] = _encode_split(
                name,
                (Path(src), Path(tgt)),
                (src_lang, tgt_lang),
                build,
                processor,
                dtype,
                settings,
            )
        manifest = _identity(src_lang, tgt_lang, settings, origin) | {
            "sources": sources,
            "vocab": asdict(Vocab(vocab_size)) | {"spm_model": SPM_MODEL},
            "dtype": dtype.name,
            "splits": splits,
            "outputs": {p.name: _sha256(p) for p in sorted(build.iterdir())},
        }
        payload = {"schema_version": MANIFEST_VERSION, **manifest}
        write_text_atomic(build / MANIFEST, json.dumps(payload, indent=2) + "\n")
        _readable_by_all(build, build / MANIFEST)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); rename cannot replace a directory portably
        os.replace(build, out_dir)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return {"schema_version": MANIFEST_VERSION, **manifest}


def _readable_by_all(*paths: Path) -> None:
    """Undo the private modes of temporary files: prepared data is shared (umask applies)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in paths:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _hashes(sources: dict[str, Any]) -> dict[str, Any]:
    """Source identity is content, not path: the same text moved elsewhere is the same data."""
    return {name: {lang: s["sha256"] for lang, s in pair.items()} for name, pair in sources.items()}


def _sha256(path: Path) -> str:
    return _scan(path)["sha256"]


def _scan(path: Path) -> dict[str, Any]:
    """sha256 and line count (a last line without a newline counts) in one pass."""
    digest, lines, last = hashlib.sha256(), 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            lines += block.count(b"\n")
            last = block[-1:]
    return {"sha256": digest.hexdigest(), "lines": lines + (last != b"\n")}


def _train_sentencepiece(texts: list[Path], build: Path, settings: PrepareSettings) -> int:
    model = io.BytesIO()  # a model_prefix would be recorded in the model, breaking determinism
    spm.set_random_generator_seed(settings.seed)
    try:
        spm.SentencePieceTrainer.train(
            input=[str(p) for p in texts],
            model_writer=model,
            vocab_size=settings.vocab_size,
            model_type=settings.model_type,
            character_coverage=settings.character_coverage,
            input_sentence_size=settings.input_sentence_size,
            shuffle_input_sentence=True,
            num_threads=settings.spm_threads,
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            minloglevel=2,
        )
    except RuntimeError as err:
        message = str(err).splitlines()[0].split("] ")[-1]
        raise UserError(f"SentencePiece training failed: {message}") from None
    (build / SPM_MODEL).write_bytes(model.getvalue())
    return spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()


def _read_pairs(paths: tuple[Path, Path]) -> Iterator[list[tuple[str, str]]]:
    """Stripped line pairs of two files already checked to be aligned, in chunks."""
    # newline="\n": a stray carriage return inside a sentence must not split it in two.
    with (
        open(paths[0], encoding="utf-8", newline="\n") as a,
        open(paths[1], encoding="utf-8", newline="\n") as b,
    ):
        pairs = zip(a, b, strict=True)
        while chunk := list(itertools.islice(pairs, _CHUNK)):
            yield [(s.strip(), t.strip()) for s, t in chunk]


def _encode_split(
    name: str,
    paths: tuple[Path, Path],
    langs: tuple[str, str],
    build: Path,
    processor: spm.SentencePieceProcessor,
    dtype: np.dtype,
    settings: PrepareSettings,
) -> dict[str, Any]:
    evaluation = name != TRAIN
    dropped = {"empty": 0, "too_long": 0, "ratio": 0}
    lengths: dict[str, list[np.ndarray]] = {lang: [] for lang in langs}
    with contextlib.ExitStack() as files:
        bins = {
            lang: files.enter_context(open(build / f"{name}.{lang}.bin", "wb")) for lang in langs
        }
        texts = {
            lang: files.enter_context(open(build / f"{name}.{lang}.txt", "w", encoding="utf-8"))
            for lang in (langs if evaluation else ())
        }
        for chunk in _read_pairs(paths):
            encoded = [
                processor.encode([pair[side] for pair in chunk], num_threads=settings.spm_threads)
                for side in (0, 1)
            ]
            sizes = [np.fromiter(map(len, ids), np.int64, len(ids)) for ids in encoded]
            keep = np.ones(len(chunk), bool) if evaluation else _keep(*sizes, settings, dropped)
            for side, lang in enumerate(langs):
                ids = [seq for seq, k in zip(encoded[side], keep, strict=True) if k]
                lengths[lang].append(sizes[side][keep])
                np.fromiter(itertools.chain.from_iterable(ids), dtype).tofile(bins[lang])
                if evaluation:
                    texts[lang].writelines(pair[side] + "\n" for pair in chunk)
    info: dict[str, Any] = {"sentences": 0, "tokens": {}}
    for lang in langs:
        counts = np.concatenate(lengths[lang]) if lengths[lang] else np.zeros(0, np.int64)
        offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        offsets.tofile(build / f"{name}.{lang}.idx")
        info["sentences"] = len(counts)
        info["tokens"][lang] = int(offsets[-1])
    if not evaluation:
        info["dropped"] = dropped
    if info["sentences"] == 0:
        raise UserError(f"the {name} split has no sentence pairs left (files empty or filtered)")
    return info


def _keep(
    src_len: np.ndarray, tgt_len: np.ndarray, settings: PrepareSettings, dropped: dict[str, int]
) -> np.ndarray:
    """Which pairs pass the training filters; each rejected pair is counted under the first
    filter it fails (empty, too_long, ratio)."""
    longer, shorter = np.maximum(src_len, tgt_len), np.minimum(src_len, tgt_len)
    failures = {"empty": shorter == 0}
    if settings.max_len is not None:
        failures["too_long"] = longer > settings.max_len
    if settings.max_ratio is not None:
        failures["ratio"] = longer > settings.max_ratio * shorter
    keep = np.ones(len(longer), dtype=bool)
    for reason, failed in failures.items():
        dropped[reason] += int((failed & keep).sum())
        keep &= ~failed
    return keep


# -- loading ----------------------------------------------------------------------------------
class TokenArray:
    """Sentences of one language in one split, memory-mapped from ``.bin``/``.idx``."""

    def __init__(self, bin_path: Path, idx_path: Path, dtype: np.dtype) -> None:
        self.offsets = np.memmap(idx_path, dtype=np.int64, mode="r")
        expected = int(self.offsets[-1]) * dtype.itemsize
        if bin_path.stat().st_size != expected:
            raise UserError(f"{bin_path} is truncated or corrupt (expected {expected} bytes)")
        self.tokens = np.memmap(bin_path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype)
        self.lengths = np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


@dataclass(frozen=True)
class ParallelSplit:
    name: str
    src: TokenArray
    tgt: TokenArray

    def __len__(self) -> int:
        return len(self.src)

    def batch_lengths(self) -> np.ndarray:
        """Per sentence ``max(src + EOS, BOS + tgt)``: its padded width in a batch."""
        return np.maximum(self.src.lengths, self.tgt.lengths) + 1


class TranslationData:
    """A prepared directory, read in the ``src_lang -> tgt_lang`` direction (by default the
    one it was prepared for; the arrays serve both)."""

    def __init__(self, root: Path, src_lang: str | None = None, tgt_lang: str | None = None):
        self.root = Path(root)
        manifest = _existing_manifest(self.root)
        if manifest is None:
            raise UserError(
                f"{self.root} is not prepared translation data (no {MANIFEST}); "
                "run scripts/prepare_wmt14.py first"
            )
        if manifest.get("schema_version") != MANIFEST_VERSION:
            raise UserError(f"{self.root / MANIFEST}: unsupported schema_version")
        self.manifest = manifest
        default_src, default_tgt = manifest["languages"]
        self.src_lang = src_lang or default_src
        self.tgt_lang = tgt_lang or (default_src if self.src_lang == default_tgt else default_tgt)
        if {self.src_lang, self.tgt_lang} != set(manifest["languages"]):
            raise UserError(
                f"{self.root} holds {'-'.join(manifest['languages'])}, "
                f"not {self.src_lang}-{self.tgt_lang}"
            )
        fields = {k: v for k, v in manifest["vocab"].items() if k in Vocab.__dataclass_fields__}
        self.vocab = Vocab(**fields)
        self.tokenizer = spm.SentencePieceProcessor(
            model_file=str(self.root / manifest["vocab"]["spm_model"])
        )
        self._dtype = np.dtype(manifest["dtype"])

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def split(self, name: str) -> ParallelSplit:
        if name not in self.manifest["splits"]:
            raise UserError(f"{self.root} has no {name!r} split; it has {self.splits}")
        arrays = [
            TokenArray(
                self.root / f"{name}.{lang}.bin", self.root / f"{name}.{lang}.idx", self._dtype
            )
            for lang in (self.src_lang, self.tgt_lang)
        ]
        return ParallelSplit(name, *arrays)

    def texts(self, split: str, lang: str) -> list[str]:
        """Raw lines of an evaluation split (``references``: the target side)."""
        path = self.root / f"{split}.{lang}.txt"
        if not path.is_file():
            raise UserError(f"{self.root} keeps no raw text for the {split!r} split")
        with open(path, encoding="utf-8", newline="\n") as f:
            return [line.removesuffix("\n") for line in f]

    def references(self, split: str) -> list[str]:
        return self.texts(split, self.tgt_lang)

    def detokenize(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids))


# -- batching ---------------------------------------------------------------------------------
class BatchSampler:
    """Sentence-index batches of one epoch for one data-parallel rank (see module docstring).

    ``lengths``: each sentence's padded width (:meth:`ParallelSplit.batch_lengths`). A sentence
    wider than ``max_tokens`` gets a batch of its own (only possible in unfiltered splits).
    ``shuffle=False`` keeps length order and the same batches every epoch (evaluation).
    ``drop_remainder`` defaults to ``shuffle``: evaluation must see every sentence, so its
    ranks may get one batch more or less.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        *,
        max_tokens: int | None = None,
        max_sentences: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_remainder: bool | None = None,
    ) -> None:
        if max_tokens is None and max_sentences is None:
            raise UserError("batching needs max_tokens or max_sentences")
        if (max_tokens is not None and max_tokens < 1) or (
            max_sentences is not None and max_sentences < 1
        ):
            raise UserError("max_tokens and max_sentences must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.drop_remainder = shuffle if drop_remainder is None else drop_remainder
        # Batch boundaries in sorted order depend only on the sorted lengths, so they are the
        # same every epoch; only which of equally long sentences fill them changes.
        self._bounds = _pack(np.sort(self.lengths), max_tokens, max_sentences)
        batches = len(self._bounds) - 1
        if self.drop_remainder:
            self._per_rank = [batches // world_size] * world_size
        else:
            self._per_rank = [len(range(r, batches, world_size)) for r in range(world_size)]
        if self._per_rank[rank] == 0 and len(self.lengths):
            raise UserError(
                f"{batches} batches cannot be shared by {world_size} ranks; "
                "lower max_tokens/max_sentences or use fewer ranks"
            )

    def __len__(self) -> int:
        """Batches this rank gets per epoch."""
        return self._per_rank[self.rank]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
        """This rank's batches of ``epoch``, from its ``start``-th (to resume mid-epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:
            ties = rng.permutation(len(self.lengths))
            order = ties[np.argsort(self.lengths[ties], kind="stable")]
        else:
            order = np.argsort(self.lengths, kind="stable")
        batches = [order[a:b] for a, b in itertools.pairwise(self._bounds)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        mine = batches[self.rank :: self.world_size][: len(self)]
        yield from mine[start:]


def _pack(sorted_lengths: np.ndarray, max_tokens: int | None, max_sentences: int | None) -> list:
    """Greedy batch boundaries over ascending lengths: a batch's cost is its size times its
    last (longest) length, which grows with every sentence added, so each batch is the longest
    run that fits."""
    n = len(sorted_lengths)
    bounds, start = [0], 0
    cap_sentences = max_sentences or n
    while start < n:
        limit = min(cap_sentences, n - start)
        if max_tokens is not None:
            limit = min(limit, max(1, max_tokens // max(1, int(sorted_lengths[start]))))
            cost = np.arange(1, limit + 1) * sorted_lengths[start : start + limit]
            limit = max(1, int(np.searchsorted(cost, max_tokens, side="right")))
        start += limit
        bounds.append(start)
    return bounds


@dataclass
class TranslationBatch:
    """Padded ``(batch, length)`` int64 tensors: ``src`` = tokens + EOS, ``tgt_in`` = BOS +
    tokens, ``tgt_out`` = tokens + EOS; ``indices`` are the sentences' positions in the split
    (they stay on the CPU in :meth:`to`)."""

    src: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    indices: Tensor
    n_target_tokens: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TranslationBatch:
        return replace(
            self,
            src=self.src.to(device, non_blocking=non_blocking),
            tgt_in=self.tgt_in.to(device, non_blocking=non_blocking),
            tgt_out=self.tgt_out.to(device, non_blocking=non_blocking),
        )


def _pad(rows: list[np.ndarray], pad_id: int) -> Tensor:
    out = np.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return torch.from_numpy(out)


def collate(split: ParallelSplit, indices: np.ndarray, vocab: Vocab) -> TranslationBatch:
    """Pad the sentences ``indices`` of ``split`` into a batch (see :class:`TranslationBatch`)."""
    src = [np.append(split.src[i], vocab.eos_id) for i in indices]
    tgt = [split.tgt[i] for i in indices]
    return TranslationBatch(
        src=_pad(src, vocab.pad_id),
        tgt_in=_pad([np.insert(t, 0, vocab.bos_id) for t in tgt], vocab.pad_id),
        tgt_out=_pad([np.append(t, vocab.eos_id) for t in tgt], vocab.pad_id),
        indices=torch.as_tensor(np.asarray(indices, dtype=np.int64)),
        n_target_tokens=sum(len(t) + 1 for t in tgt),
    )


class TranslationLoader:
    """Collated batches of one split for one rank: a :class:`BatchSampler` over the split (or
    over the sentences ``subset``, e.g. the first N of validation) plus :func:`collate`."""

    def __init__(
        self,
        data: TranslationData,
        split: str,
        *,
        max_tokens: int | None = None,
        max_sentences: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_remainder: bool | None = None,
        subset: np.ndarray | None = None,
    ) -> None:
        self.data = data
        self.split = data.split(split)
        self.subset = np.arange(len(self.split)) if subset is None else np.asarray(subset)
        self.sampler = BatchSampler(
            self.split.batch_lengths()[self.subset],
            max_tokens=max_tokens,
            max_sentences=max_sentences,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            drop_remainder=drop_remainder,
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[TranslationBatch]:
        for batch in self.sampler.epoch(epoch, start):
            yield collate(self.split, self.subset[batch], self.data.vocab)

"""Workloads: what a step's batches are, what the loss is, and how a model is evaluated.

A task owns its model and its data, sharded for this process. ``batches(epoch, start)`` yields,
for each remaining optimizer step of the epoch, this process's list of micro-batches; ``loss``
returns the *sum* of per-sample (or per-token) losses and the count, which the engine uses to
weight the global batch exactly; ``evaluate`` returns metrics computed over all processes
(numbers, plus non-numeric notes such as sacrebleu's signature), identical on every process.

``ClassificationTask``: images -> labels; top-1/top-5 (%) and loss. ``TranslationTask``: an
encoder-decoder on prepared parallel text; label-smoothed loss per target token, validation
loss, perplexity and BLEU on a validation subset, and test BLEU at the final evaluation.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from graftbench.batching import split_batch, token_accumulation
from graftbench.data import build_images
from graftbench.errors import UserError
from graftbench.models import build_model
from graftbench.train.distributed import Dist, all_gather_objects, all_reduce_sum


class Task(ABC):
    model: nn.Module
    steps_per_epoch: int

    @abstractmethod
    def batches(self, epoch: int, start_step: int) -> Iterator[list[Any]]:
        """This process's micro-batches for each step of ``epoch`` from ``start_step`` on."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, Tensor | int]:
        """(sum of the losses in ``batch``, how many samples or tokens they are)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, dist: Dist, final: bool = False) -> dict[str, Any]:
        """Metrics on the evaluation data; ``final``: the end-of-training evaluation."""

    def to_device(self, batch: Any, device: torch.device, channels_last: bool) -> Any:
        """Move a batch's tensors (images in NHWC when ``channels_last``)."""
        if isinstance(batch, Tensor):
            batch = batch.to(device, non_blocking=True)
            if channels_last and batch.dim() == 4 and batch.is_floating_point():
                batch = batch.contiguous(memory_format=torch.channels_last)
            return batch
        if isinstance(batch, list | tuple):
            return type(batch)(self.to_device(b, device, channels_last) for b in batch)
        return batch


def make_task(cfg: DictConfig, dist: Dist) -> Task:
    kind = cfg.data.task
    if kind == "classification":
        return ClassificationTask(cfg, dist)
    if kind == "translation":
        return TranslationTask(cfg, dist)
    raise UserError(f"data.task: unknown task {kind!r}; choose from: classification, translation")


def count_parameters(cfg: DictConfig) -> int:
    """The model's parameter count, built on the meta device (no memory, no data needed;
    translation models at their configured vocabulary size, 32k for the paper's)."""
    with torch.device("meta"):
        model = build_model(cfg.model)
    return sum(p.numel() for p in model.parameters())


class ClassificationTask(Task):
    """Images to labels: cross entropy; top-1, top-5 (in %) and loss on the validation set."""

    def __init__(self, cfg: DictConfig, dist: Dist) -> None:
        from graftbench.data.sampling import make_loader

        data = build_images(cfg.data)
        if data.num_classes != cfg.data.num_classes:
            raise UserError(
                f"data.num_classes={cfg.data.num_classes} but the dataset has "
                f"{data.num_classes} classes; set data.num_classes={data.num_classes}"
            )
        per_device, self.accum = split_batch(cfg.trainer, dist.world_size)
        loader_options = dict(
            rank=dist.rank,
            world_size=dist.world_size,
            workers=cfg.data.workers,
            pin_memory=cfg.data.get("pin_memory", False) and dist.device.type == "cuda",
            persistent_workers=cfg.data.get("persistent_workers", False),
        )
        self.train_loader = make_loader(
            data.train,
            per_device,
            train=True,
            seed=cfg.seed,
            block=per_device * self.accum,
            **loader_options,
        )
        self.val_loader = make_loader(
            data.val, per_device, train=False, seed=cfg.seed, **loader_options
        )
        self.steps_per_epoch = self.train_loader.batches_per_epoch // self.accum
        if self.steps_per_epoch == 0:
            raise UserError(
                f"trainer.batch_size={cfg.trainer.batch_size} is larger than the training set "
                f"({len(data.train)} samples)"
            )
        self.model = build_model(cfg.model)
        self.label_smoothing = cfg.trainer.label_smoothing
        self.channels_last = cfg.trainer.channels_last
        self.top_k = min(5, data.num_classes)

    def batches(self, epoch: int, start_step: int) -> Iterator[list[Any]]:
        self.train_loader.set_epoch(epoch, start_step * self.accum)
        micro_batches = iter(self.train_loader)
        for _ in range(start_step, self.steps_per_epoch):
            yield [next(micro_batches) for _ in range(self.accum)]

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, int]:
        images, labels = batch
        logits = model(images).float()
        loss = F.cross_entropy(
            logits, labels, reduction="sum", label_smoothing=self.label_smoothing
        )
        return loss, labels.numel()

    def evaluate(self, model: nn.Module, dist: Dist, final: bool = False) -> dict[str, Any]:
        sums = torch.zeros(4, device=dist.device, dtype=torch.float64)  # loss, top1, top5, n
        self.val_loader.set_epoch(0)
        for batch in self.val_loader:
            images, labels = self.to_device(batch, dist.device, self.channels_last)
            logits = model(images).float()
            top = logits.topk(self.top_k, dim=1).indices
            hits = top == labels[:, None]
            sums += torch.stack(
                [
                    F.cross_entropy(logits, labels, reduction="sum").double(),
                    hits[:, 0].sum().double(),
                    hits.any(dim=1).sum().double(),
                    torch.tensor(float(labels.numel()), device=dist.device, dtype=torch.float64),
                ]
            )
        all_reduce_sum(sums, dist)
        loss, top1, top5, count = sums.tolist()
        return {"loss": loss / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count}


class TranslationTask(Task):
    """Source sentences to target sentences with an encoder-decoder (data/translation.py).

    Batches: ``trainer.batch_size`` sentences a step, bucketed by length (the paper's 384), or
    with ``data.max_tokens`` set, ``trainer.batch_size`` padded tokens a step in micro-batches
    of at most ``data.max_tokens`` tokens; either way split over devices and accumulation.
    """

    def __init__(self, cfg: DictConfig, dist: Dist) -> None:
        from graftbench.data.translation import TranslationData, TranslationLoader

        d = cfg.data
        self.options = d
        self.data = TranslationData(Path(d.root), d.src_lang, d.tgt_lang)
        vocab = self.data.vocab
        if d.max_tokens:
            self.accum = token_accumulation(cfg.trainer.batch_size, d.max_tokens, dist.world_size)
            size = {"max_tokens": d.max_tokens}
        else:
            per_device, self.accum = split_batch(cfg.trainer, dist.world_size)
            size = {"max_sentences": per_device}
        self.rank, self.world_size = dist.rank, dist.world_size
        self.train_loader = TranslationLoader(
            self.data,
            d.train_split,
            shuffle=True,
            seed=cfg.seed,
            rank=dist.rank,
            world_size=dist.world_size,
            **size,
        )
        self.steps_per_epoch = len(self.train_loader) // self.accum
        if self.steps_per_epoch == 0:
            raise UserError(f"{d.train_split} has fewer batches than one step takes")
        self.model = build_model(
            cfg.model,
            vocab_size=vocab.size,
            pad_id=vocab.pad_id,
            bos_id=vocab.bos_id,
            eos_id=vocab.eos_id,
        )
        self.pad_id = vocab.pad_id
        self.label_smoothing = cfg.trainer.label_smoothing

    def batches(self, epoch: int, start_step: int) -> Iterator[list[Any]]:
        micro_batches = self.train_loader.epoch(epoch, start_step * self.accum)
        for _ in range(start_step, self.steps_per_epoch):
            yield [next(micro_batches) for _ in range(self.accum)]

    def to_device(self, batch: Any, device: torch.device, channels_last: bool) -> Any:
        return batch.to(device, non_blocking=True)

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, Tensor]:
        from graftbench.models.transformer import label_smoothed_loss

        logits = model(batch.src, batch.tgt_in)
        return label_smoothed_loss(logits, batch.tgt_out, self.pad_id, self.label_smoothing)

    def evaluate(self, model: nn.Module, dist: Dist, final: bool = False) -> dict[str, Any]:
        from graftbench.data.translation import TranslationLoader
        from graftbench.models.transformer import label_smoothed_loss

        d = self.options
        sums = torch.zeros(2, device=dist.device, dtype=torch.float64)  # nll, tokens
        loader = TranslationLoader(
            self.data,
            d.valid_split,
            max_tokens=d.eval_max_tokens,
            shuffle=False,
            rank=dist.rank,
            world_size=dist.world_size,
        )
        for batch in loader.epoch(0):
            batch = batch.to(dist.device)
            nll, tokens = label_smoothed_loss(
                model(batch.src, batch.tgt_in), batch.tgt_out, self.pad_id, smoothing=0.0
            )
            sums += torch.stack([nll.double(), tokens.double()])
        all_reduce_sum(sums, dist)
        loss = float(sums[0] / sums[1])
        metrics: dict[str, Any] = {"loss": loss, "ppl": math.exp(min(loss, 50.0))}
        valid = self.data.references(d.valid_split)
        subset = range(min(len(valid), d.valid_bleu_sentences or len(valid)))
        metrics["bleu"], metrics["bleu_signature"] = self._bleu(model, d.valid_split, subset, dist)
        if final:
            test = range(len(self.data.references(d.test_split)))
            metrics["test_bleu"], _ = self._bleu(model, d.test_split, test, dist)
        return metrics

    def _bleu(self, model: nn.Module, split: str, indices: range, dist: Dist) -> tuple[float, str]:
        """Beam-search BLEU of ``indices`` of ``split``: each process decodes a share."""
        from graftbench.models.decoding import bleu, translate

        d = self.options
        mine = list(indices)[dist.rank :: dist.world_size]
        module = _unwrapped(model)
        hypotheses = (
            translate(
                module,
                self.data,
                split,
                indices=mine,
                max_tokens=d.eval_max_tokens,
                beam_size=d.beam_size,
                length_penalty=d.length_penalty,
                max_len_ratio=d.max_len_ratio,
                max_len_offset=d.max_len_offset,
            )
            if mine
            else []
        )
        shares = all_gather_objects((mine, hypotheses), dist)
        by_index = {i: h for ids, hyps in shares for i, h in zip(ids, hyps, strict=True)}
        references = self.data.references(split)
        return bleu([by_index[i] for i in indices], [references[i] for i in indices])


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module under DDP and torch.compile wrappers (decoding calls its own methods)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model

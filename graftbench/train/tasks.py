"""Workloads: what a step's batches are, what the loss is, and how a model is evaluated.

A task owns its model and its data, sharded for this process. ``batches(epoch, start)`` yields,
for each remaining optimizer step of the epoch, this process's list of micro-batches; ``loss``
returns the *sum* of per-sample (or per-token) losses and the count, which the engine uses to
weight the global batch exactly; ``evaluate`` returns metrics summed over all processes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from graftbench.errors import UserError
from graftbench.train.distributed import Dist, all_reduce_sum


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
    def evaluate(self, model: nn.Module, dist: Dist) -> dict[str, float]:
        """Metrics on the evaluation set, identical on every process."""

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
        from graftbench.train.translation import TranslationTask

        return TranslationTask(cfg, dist)
    raise UserError(f"data.task: unknown task {kind!r}; choose from: classification, translation")


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, letting a ``UserError`` from the target through as itself."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise


def split_batch(trainer: DictConfig, world_size: int) -> tuple[int, int]:
    """(per-device batch, accumulation steps) giving ``trainer.batch_size`` on ``world_size``."""
    total = trainer.batch_size
    per_device = trainer.per_device_batch_size or total // world_size
    if total <= 0 or per_device <= 0 or total % (per_device * world_size):
        raise UserError(
            f"trainer.batch_size={total} is not a multiple of per-device batch {per_device} × "
            f"{world_size} device(s); set trainer.per_device_batch_size to a divisor"
        )
    return per_device, total // (per_device * world_size)


class ClassificationTask(Task):
    """Images to labels: cross entropy; top-1, top-5 (in %) and loss on the validation set."""

    def __init__(self, cfg: DictConfig, dist: Dist) -> None:
        from graftbench.data.sampling import make_loader

        data = build(cfg.data.source)
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
        self.model = build(cfg.model)
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

    def evaluate(self, model: nn.Module, dist: Dist) -> dict[str, float]:
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

"""Which samples each rank sees, in which order, and how a resumed run picks up mid-epoch.

``ShardedSampler`` shards an epoch's permutation over ranks exactly as
``torch.utils.data.DistributedSampler`` does (pad by repeating, or drop the tail, so every rank
gets the same number of samples; rank r takes every world_size-th index from r), with two
differences:

- The permutation is seeded by ``derive_seed(seed, epoch)`` rather than ``seed + epoch``, so
  run seed 1 at epoch 0 does not replay run seed 0 at epoch 1: seeds in a sweep stay independent.
- ``set_epoch(epoch, start)`` skips the first ``start`` samples of this rank's shard, so a run
  resumed after ``k`` batches continues with batch ``k`` instead of replaying batches 0..k-1.
- ``block`` > 1 shards in contiguous blocks: of every ``block × world_size`` consecutive samples
  of the order, rank r takes the r-th block. With ``block`` = a rank's share of one global batch
  (per-device batch × accumulation steps), the samples of each micro-batch depend only on the
  per-device batch size, not on how many ranks and accumulation steps make up the global
  batch: 1 process × 2 micro-batches and 2 processes × 1 see the same micro-batches (and
  BatchNorm the same statistics).

``make_loader`` wraps a ``DataLoader`` around it and, for training, seeds the random
augmentation of every sample from (seed, epoch, index): a sample is augmented the same way
whatever the number of workers or ranks, and whether or not the run was resumed. Its worker
processes ignore the stop signals that a terminal (Ctrl-C) or SLURM (SIGTERM, SIGUSR1/2) sends to
every process of the run: the training process decides when to stop, and ends its workers.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def _worker_signals(worker_id: int) -> None:
    """A loader worker ignores the stop signals meant for the training process (which ends its
    workers itself): SIGINT, SIGUSR1, SIGUSR2, and SIGTERM unless its parent sent it."""
    for signum in (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)
    # multiprocessing ends workers with the parent's SIGTERM (also at interpreter exit), so that
    # one must still end the worker; only a thread's sigwaitinfo tells who sent a signal
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_parents_sigterm, daemon=True).start()


def _exit_on_parents_sigterm() -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == os.getppid():
            os._exit(0)  # as torch's own worker handler does for the parent's SIGTERM


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (non-negative ints), via numpy's SeedSequence."""
    state = np.random.SeedSequence(parts).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


class ShardedSampler(Sampler[int]):
    """This rank's shard of each epoch's order of ``range(size)``, resumable mid-epoch.

    ``even=True`` gives every rank the same number of samples (``drop_last`` drops the tail of
    the permutation, else it is padded by repeating its start), as training needs so that
    gradient all-reduces line up. ``even=False`` splits the dataset exactly, shards differing in
    length by at most one: what evaluation needs so that every sample is counted once.
    """

    def __init__(
        self,
        size: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        even: bool = True,
        block: int = 1,
    ) -> None:
        if block > 1 and not even:
            raise ValueError("block sharding needs even shards")
        if size < 1:
            raise ValueError(f"cannot sample from an empty dataset (size {size})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if seed < 0:
            raise ValueError(f"seed must be non-negative; got {seed}")
        self.size = size
        self.world_size = world_size
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.even = even
        self.block = block
        unit = world_size * block
        if not even:
            self.num_samples = len(range(rank, size, world_size))
        elif drop_last:
            self.num_samples = size // unit * block
        else:
            self.num_samples = math.ceil(size / unit) * block
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate over ``epoch``'s shard from its ``start``-th sample on."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} is not in [0, {self.num_samples}]")
        self.epoch = epoch
        self.start = start

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        if self.even:
            total = self.num_samples * self.world_size
            order = (order * math.ceil(total / self.size))[:total]
        if self.block == 1:
            shard = order[self.rank :: self.world_size]
        else:
            blocks = np.asarray(order).reshape(-1, self.world_size, self.block)
            shard = blocks[:, self.rank, :].ravel().tolist()
        return iter(shard[self.start :])

    def __len__(self) -> int:
        """The number of samples the next iteration yields (the shard less ``start``)."""
        return self.num_samples - self.start


class _EpochKeys(Sampler[tuple[int, int]]):
    """Yields (epoch, index) so that a worker knows the epoch of the sample it loads."""

    def __init__(self, sampler: ShardedSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class _SeededSamples(Dataset):
    """Loads ``dataset[index]`` for a key (epoch, index) with torch's RNG seeded from the key.

    torchvision's random transforms draw from torch's default generator; its state is restored
    afterwards, so loading in the main process (no workers) does not disturb training's RNG.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        generator = torch.random.default_generator
        state = generator.get_state()
        generator.manual_seed(derive_seed(self.seed, epoch, index))
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


class ResumableLoader:
    """A ``DataLoader`` over a ``ShardedSampler``; ``set_epoch`` picks the epoch and first batch.

    ``len(loader)`` is the number of batches the next iteration yields; ``batches_per_epoch`` is
    the number in a whole epoch.
    """

    def __init__(self, dataloader: DataLoader, sampler: ShardedSampler, seed: int) -> None:
        self.dataloader = dataloader
        self.sampler = sampler
        self.seed = seed

    @property
    def batch_size(self) -> int:
        return self.dataloader.batch_size  # type: ignore[return-value]

    @property
    def batches_per_epoch(self) -> int:
        if self.dataloader.drop_last:
            return self.sampler.num_samples // self.batch_size
        return math.ceil(self.sampler.num_samples / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate over ``epoch`` from batch ``start_batch`` on (0 <= start_batch <= the count)."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} is not in [0, {self.batches_per_epoch}]")
        self.sampler.set_epoch(epoch, min(start_batch * self.batch_size, self.sampler.num_samples))
        # Worker processes seed Python's and numpy's RNGs from a base seed drawn from this
        # generator; reseeding it per epoch makes those seeds a function of (seed, epoch, rank).
        self.dataloader.generator.manual_seed(derive_seed(self.seed, epoch, self.sampler.rank))

    def __iter__(self) -> Iterator[Any]:
        return iter(self.dataloader)

    def __len__(self) -> int:
        return len(self.dataloader)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    drop_last: bool | None = None,
    block: int = 1,
) -> ResumableLoader:
    """A loader over this rank's shard of ``dataset``; call ``set_epoch`` before each epoch.

    ``batch_size`` is per rank. Training shuffles, gives every rank the same number of samples
    and, by default, drops the last partial batch; ``drop_last`` (default: ``train``) drops the
    permutation's tail instead of padding it too. Evaluation keeps the dataset's order and
    splits it exactly over ranks, so the ranks' sums count every sample once (shards, and so
    batch counts, may differ by one between ranks). ``block`` (training): see ``ShardedSampler``.
    """
    if drop_last is None:
        drop_last = train
    sampler = ShardedSampler(
        len(dataset),  # type: ignore[arg-type]
        world_size=world_size,
        rank=rank,
        shuffle=train,
        seed=seed,
        drop_last=drop_last,
        even=train,
        block=block,
    )
    dataloader = DataLoader(
        _SeededSamples(dataset, seed) if train else dataset,
        batch_size=batch_size,
        sampler=_EpochKeys(sampler) if train else sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and workers > 0,
        drop_last=drop_last,
        generator=torch.Generator(),
        worker_init_fn=_worker_signals,
    )
    loader = ResumableLoader(dataloader, sampler, seed)
    loader.set_epoch(0)
    return loader

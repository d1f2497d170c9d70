"""ShardedSampler against torch's DistributedSampler; mid-epoch resume; the resumable loader."""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch.utils.data import Dataset, DistributedSampler, TensorDataset

from graftbench.data.sampling import ShardedSampler, derive_seed, make_loader

CASES = list(itertools.product([1, 2, 7, 10, 13], [1, 2, 3, 4], [False, True], [False, True]))


@pytest.mark.parametrize(("size", "world_size", "shuffle", "drop_last"), CASES)
def test_shards_equal_distributed_samplers_for_the_derived_seed(
    size, world_size, shuffle, drop_last
):
    # DistributedSampler seeds its permutation with seed + epoch; ours with derive_seed(seed,
    # epoch). Given that seed at epoch 0, DistributedSampler must produce our shards exactly.
    seed, epoch = 5, 3
    for rank in range(world_size):
        ours = ShardedSampler(
            size,
            world_size=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        ours.set_epoch(epoch)
        reference = DistributedSampler(
            range(size),
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=derive_seed(seed, epoch),
            drop_last=drop_last,
        )
        assert list(ours) == list(reference)
        assert len(ours) == ours.num_samples == len(reference)


def test_seeds_and_epochs_give_independent_orders():
    def order(seed, epoch):
        sampler = ShardedSampler(100, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert sorted(order(0, 0)) == list(range(100))
    assert order(0, 0) == order(0, 0)
    # DistributedSampler's seed + epoch would make these two equal.
    assert order(1, 0) != order(0, 1)
    assert order(0, 0) != order(0, 1)


@pytest.mark.parametrize(("size", "world_size"), [(10, 3), (12, 4), (2, 3), (7, 1)])
def test_uneven_shards_cover_the_dataset_exactly_once(size, world_size):
    shards = [
        list(ShardedSampler(size, world_size=world_size, rank=r, shuffle=False, even=False))
        for r in range(world_size)
    ]
    assert sorted(itertools.chain(*shards)) == list(range(size))
    assert all(shard == sorted(shard) for shard in shards)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize(
    ("world_size", "drop_last", "even"),
    [(1, False, True), (3, True, True), (3, False, True), (3, False, False)],
)
def test_resume_yields_the_tail_of_the_uninterrupted_order(world_size, drop_last, even):
    sampler = ShardedSampler(
        23, world_size=world_size, rank=world_size - 1, seed=1, drop_last=drop_last, even=even
    )
    sampler.set_epoch(4)
    full = list(sampler)
    assert len(full) == sampler.num_samples
    for start in range(sampler.num_samples + 1):
        sampler.set_epoch(4, start)
        assert list(sampler) == full[start:]
        assert len(sampler) == len(full) - start


def test_invalid_arguments_raise():
    sampler = ShardedSampler(10, world_size=2, rank=1)
    with pytest.raises(ValueError, match="start 6"):
        sampler.set_epoch(0, 6)
    with pytest.raises(ValueError, match="rank 2"):
        ShardedSampler(10, world_size=2, rank=2)
    with pytest.raises(ValueError, match="empty"):
        ShardedSampler(0)


def test_derive_seed_depends_on_every_part_and_fits_a_generator():
    seeds = {derive_seed(*parts) for parts in itertools.product(range(3), range(3), range(3))}
    assert len(seeds) == 27
    assert all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(1, 2) != derive_seed(2, 1)


def indices(loader) -> list[list[int]]:
    return [batch.tolist() for (batch,) in loader]


@pytest.mark.parametrize(("train", "drop_last"), [(True, True), (True, False), (False, False)])
def test_loader_batches_are_the_shard_in_order_and_resume_at_a_batch(train, drop_last):
    dataset = TensorDataset(torch.arange(50))
    world_size, batch_size = 3, 4
    loaders = [
        make_loader(
            dataset,
            batch_size,
            train=train,
            seed=7,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
        )
        for rank in range(world_size)
    ]
    epoch_batches = []
    for loader in loaders:
        loader.set_epoch(2)
        shard = list(loader.sampler)
        batches = indices(loader)
        expected = [shard[i : i + batch_size] for i in range(0, len(shard), batch_size)]
        if drop_last:
            expected = [b for b in expected if len(b) == batch_size]
        assert batches == expected
        rounding = math.floor if drop_last else math.ceil
        assert len(batches) == loader.batches_per_epoch == rounding(len(shard) / batch_size)
        for start_batch in range(loader.batches_per_epoch + 1):
            loader.set_epoch(2, start_batch)
            assert len(loader) == loader.batches_per_epoch - start_batch
            assert indices(loader) == batches[start_batch:]
        epoch_batches.append(batches)
    seen = sorted(i for batches in epoch_batches for batch in batches for i in batch)
    if train:  # every rank gets the same number of batches, as DDP needs
        assert len({len(b) for b in epoch_batches}) == 1
        assert set(seen) <= set(range(50))
    else:  # evaluation counts every sample exactly once
        assert seen == list(range(50))


def test_loader_rejects_a_start_batch_past_the_epoch():
    loader = make_loader(TensorDataset(torch.arange(10)), 4, train=True, seed=0)
    with pytest.raises(ValueError, match="start_batch 3"):
        loader.set_epoch(0, 3)


@pytest.mark.parametrize(("size", "per_device", "accumulation"), [(100, 4, 2), (37, 3, 2)])
def test_block_sharding_makes_micro_batches_independent_of_the_device_split(
    size, per_device, accumulation
):
    """A global batch of per_device × accumulation × 2 samples: 1 rank accumulating twice as
    many micro-batches sees exactly the micro-batches 2 ranks see between them."""
    devices = 2

    def micro_batches(world_size, accum):
        shards = [
            list(
                ShardedSampler(
                    size,
                    world_size=world_size,
                    rank=r,
                    seed=3,
                    drop_last=True,
                    block=per_device * accum,
                )
            )
            for r in range(world_size)
        ]
        steps = len(shards[0]) // (per_device * accum)
        out = []
        for step in range(steps):
            for r in range(world_size):  # rank-major, then accumulation step
                for j in range(accum):
                    start = (step * accum + j) * per_device
                    out.append(shards[r][start : start + per_device])
        return out

    one = micro_batches(1, accumulation * devices)
    two = micro_batches(devices, accumulation)
    assert one == two and len(one) > 0
    flat = [i for batch in one for i in batch]
    assert len(flat) == len(set(flat))  # no sample twice in an epoch
    assert len(flat) == size // (per_device * accumulation * devices) * (
        per_device * accumulation * devices
    )


class WhoLoads(Dataset):
    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> tuple[int, int]:
        return index, os.getpid()


def test_loader_workers_ignore_stop_signals_except_their_parents_sigterm():
    # A terminal's Ctrl-C and SLURM's SIGTERM/SIGUSR reach every process of the run; a worker
    # that died of them would crash the training process before it could checkpoint.
    loader = make_loader(WhoLoads(), 1, train=False, seed=0, workers=2, persistent_workers=True)
    batches = iter(loader)
    first = [next(batches) for _ in range(2)]  # one from each worker, after its init
    pids = sorted({int(pid) for _, pid in first})
    assert len(pids) == 2
    for pid in pids:
        sender = f"import os, signal; os.kill({pid}, signal.SIGTERM)"  # not the parent: SLURM
        subprocess.run([sys.executable, "-c", sender], check=True)
        for signum in (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
            os.kill(pid, signum)
    loaded = [int(index) for index, _ in first + list(batches)]
    assert loaded == list(range(40))
    workers = batches._workers  # persistent: still there
    assert sorted(w.pid for w in workers) == pids and all(w.is_alive() for w in workers)
    for worker in workers:  # what multiprocessing's terminate() sends, also at exit
        os.kill(worker.pid, signal.SIGTERM)
        worker.join(timeout=60)
        assert worker.exitcode == 0

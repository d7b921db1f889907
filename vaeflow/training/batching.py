"""Length-bucketed batches for data-parallel training: batches of examples of similar length, so a
padded batch (a SELFIES token matrix, a padded sequence) wastes few steps on padding.

Each epoch's batches are a function of (seed, epoch, rank) and the data's lengths alone, so a run
resumed mid-epoch (``run_epoch(start_step=...)`` skips the batches already trained on) sees exactly
the batches an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from vaeflow.config import ExperimentConfig
from vaeflow.modalities.base import ModalityData


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded by a stable hash of (seed, epoch): the same on every rank and process."""
    digest = hashlib.sha256(repr(("length-buckets", seed, epoch)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class DistributedBucketBatchSampler(Sampler[list[int]]):
    """Batches of examples of similar length, split across data-parallel ranks.

    Each epoch: a seeded permutation of all examples is cut into buckets of ``batches_per_bucket``
    global batches (``batch_size × num_replicas`` examples each); each bucket is sorted by length
    (ties keep their random order) and cut into consecutive global batches; the order of all global
    batches is shuffled with the same generator; rank ``r`` takes examples ``r, r + R, r + 2R …`` of
    each global batch (interleaved, so all ranks see the same lengths at the same step and wait on
    each other as little as possible). Every rank yields the same number of batches, as DDP needs.

    The permutation keeps every example's chance to share a batch with any other of similar length;
    larger buckets pad less (narrower length bands), smaller ones mix the data more like plain
    shuffling.

    Args:
        lengths: the cost-relevant length of each example (e.g. tokens incl. ``<eos>``).
        batch_size: examples per batch on one rank.
        num_replicas: data-parallel ranks (the world size).
        rank: this rank, in [0, num_replicas).
        seed: the job's seed; with the epoch (``set_epoch``) it fixes the epoch's batches.
        batches_per_bucket: global batches per length-sorted bucket (≥ 1).
        drop_last: drop the examples left over after whole global batches (a different random few
            each epoch); False repeats the first examples of the permutation to fill the last one.

    Shapes:
        lengths: (N,) → each yielded batch: a list of ``batch_size`` indices into the data set.

    Raises:
        ValueError: a bad argument, or (with ``drop_last``) fewer examples than one global batch.
    """

    def __init__(
        self,
        lengths: Sequence[int] | torch.Tensor,
        batch_size: int,
        *,
        num_replicas: int,
        rank: int,
        seed: int,
        batches_per_bucket: int = 50,
        drop_last: bool = True,
    ):
        lengths = torch.as_tensor(lengths)
        if lengths.dim() != 1:
            raise ValueError(f"lengths must be one number per example, shape (N,); got shape {tuple(lengths.shape)}")
        if batch_size < 1 or num_replicas < 1 or batches_per_bucket < 1:
            raise ValueError(f"batch_size ({batch_size}), num_replicas ({num_replicas}) and batches_per_bucket "
                             f"({batches_per_bucket}) must all be ≥ 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.global_batch = batch_size * num_replicas
        if drop_last and len(lengths) < self.global_batch:
            raise ValueError(f"{len(lengths)} training examples do not fill one global batch of {self.global_batch} "
                             f"({batch_size} per rank × {num_replicas} ranks); lower train.batch_size or use more data")
        if len(lengths) == 0:
            raise ValueError("no examples to batch; the training split is empty")
        self.lengths = lengths.long()
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.batches_per_bucket = batches_per_bucket
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch whose batches the next iteration yields (call it before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per epoch, the same on every rank."""
        n = len(self.lengths)
        return n // self.global_batch if self.drop_last else math.ceil(n / self.global_batch)

    def global_batches(self) -> torch.Tensor:
        """This epoch's global batches in training order, as every rank computes them.

        Shapes:
            → (len(self), batch_size × num_replicas) indices; row i is step i's global batch.
        """
        g = _epoch_generator(self.seed, self.epoch)
        n, total = len(self.lengths), len(self) * self.global_batch
        perm = torch.randperm(n, generator=g)
        if total <= n:
            perm = perm[:total]
        else:  # drop_last=False: fill the last global batch from the start of the permutation
            perm = perm.repeat(math.ceil(total / n))[:total]
        chunk = self.global_batch * self.batches_per_bucket
        buckets = []
        for start in range(0, total, chunk):
            part = perm[start:start + chunk]
            order = torch.sort(self.lengths[part], stable=True).indices  # ties stay in random order
            buckets.append(part[order])
        batches = torch.cat(buckets).view(-1, self.global_batch)  # (steps, G), each row length-sorted
        return batches[torch.randperm(len(batches), generator=g)]

    def __iter__(self) -> Iterator[list[int]]:
        for row in self.global_batches():
            yield row[self.rank::self.num_replicas].tolist()  # interleaved: every rank a similar mix of lengths


class ShardSampler(Sampler[int]):
    """Rank ``rank``'s share of an evaluation set: examples ``rank, rank + R, rank + 2R …``.

    Every example is on exactly one rank, so the example-weighted means that ``run_epoch`` sums
    across ranks are the whole set's. (``DistributedSampler`` pads the shards to equal length by
    repeating the first examples, which counts those twice.) Ranks may get one example more or less
    than each other; evaluation takes no gradient step, so they need not match.
    """

    def __init__(self, num_examples: int, num_replicas: int, rank: int):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.indices = range(rank, num_examples, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def eval_loader(dataset: Dataset, modality: ModalityData, *, per_worker: int, world: int, rank: int) -> DataLoader:
    """One rank's loader over an evaluation split, in order; every example counted once over all ranks.

    A split smaller than the number of ranks keeps ``DistributedSampler``'s padding instead, so that
    every rank has a batch: a rank with none would skip the collective that DDP's first forward after
    training makes (its buffer broadcast) and the others would wait on it forever.
    """
    n = len(dataset)
    sampler: Sampler[int] = (ShardSampler(n, world, rank) if n >= world
                             else DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False))
    return DataLoader(dataset, batch_size=per_worker, sampler=sampler, collate_fn=modality.collate_fn())


def train_loader(dataset: Dataset, modality: ModalityData, config: ExperimentConfig, *, per_worker: int, world: int,
                 rank: int) -> tuple[DataLoader, DistributedBucketBatchSampler | DistributedSampler]:
    """One rank's training loader, and the sampler to ``set_epoch`` on before each epoch.

    Length-bucketed batches (:class:`DistributedBucketBatchSampler`) when ``train.length_buckets``
    asks for them and the modality gives lengths (``modality.lengths``); else a shuffling
    ``DistributedSampler``. Either way an epoch's batches depend on (seed, epoch, rank) alone and
    every rank gets the same number, whole batches only.

    Args:
        dataset: the training split.
        modality: its data side (lengths and collate function).
        config: the job config (``seed``, ``train.length_buckets``).
        per_worker: examples per batch on this rank.
        world: data-parallel ranks.
        rank: this rank.
    """
    collate = modality.collate_fn()
    lengths = modality.lengths(dataset) if config.train.length_buckets else None
    if lengths is not None:
        batches = DistributedBucketBatchSampler(lengths, per_worker, num_replicas=world, rank=rank, seed=config.seed,
                                                batches_per_bucket=config.train.length_buckets, drop_last=True)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collate), batches
    sampler: Any = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed, drop_last=True)
    return DataLoader(dataset, batch_size=per_worker, sampler=sampler, drop_last=True, collate_fn=collate), sampler

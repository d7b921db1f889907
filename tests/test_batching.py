"""Length-bucketed batches (no Ray): each example at most once per epoch, equal batch counts on every
rank, batches of similar length, batches a function of (seed, epoch, rank) alone, and the molecule
data's lengths and trimmed token batches."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from tests.conftest import MOL_TINY, tiny_config
from tests.test_loop import _resume_from_step_3_matches_uninterrupted
from vaeflow.modalities.molecule.data import PAD_ID, MoleculeData
from vaeflow.models.decoders.selfies_gru import EOS
from vaeflow.models.vae import build_model
from vaeflow.training.batching import DistributedBucketBatchSampler, ShardSampler, eval_loader, train_loader


def _lengths(n: int = 5000, seed: int = 0) -> torch.Tensor:
    """SELFIES-like lengths: MOSES's are about 36 ± 5 tokens."""
    g = torch.Generator().manual_seed(seed)
    return (36 + 5 * torch.randn(n, generator=g)).round().clamp(12, 70).long()


def _epoch(lengths, *, world: int, epoch: int = 0, seed: int = 0, batch_size: int = 32, **kw) -> list[list[list[int]]]:
    """One epoch's batches of every rank: out[rank][step] = indices."""
    out = []
    for rank in range(world):
        s = DistributedBucketBatchSampler(lengths, batch_size, num_replicas=world, rank=rank, seed=seed, **kw)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_rank_gets_as_many_whole_batches_and_each_example_is_used_at_most_once(world):
    lengths = _lengths(5003)
    ranks = _epoch(lengths, world=world, batches_per_bucket=20)
    steps = 5003 // (32 * world)
    assert [len(r) for r in ranks] == [steps] * world  # DDP: the same number of steps on every rank
    assert all(len(DistributedBucketBatchSampler(lengths, 32, num_replicas=world, rank=r, seed=0)) == steps
               for r in range(world))
    assert all(len(b) == 32 for r in ranks for b in r)
    used = [i for r in ranks for b in r for i in b]
    assert len(used) == len(set(used)) == steps * 32 * world  # the union over ranks: all but < one global batch
    assert 5003 - len(used) < 32 * world


def test_batches_hold_similar_lengths_and_ranks_see_similar_lengths_at_each_step():
    lengths = _lengths()
    spread = lambda b: float(lengths[b].max() - lengths[b].min())  # noqa: E731
    bucketed = _epoch(lengths, world=2, batches_per_bucket=50)
    plain = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0))[: 78 * 64].view(-1, 32).tolist()
    mean = lambda batches: sum(map(spread, batches)) / len(batches)  # noqa: E731
    assert mean(bucketed[0]) < 0.15 * mean(plain)
    # The padded cost (batch max) of the two ranks at a step differs by about a token at most.
    gaps = [abs(int(lengths[a].max()) - int(lengths[b].max())) for a, b in zip(*bucketed)]
    assert sum(gaps) / len(gaps) <= 1.0
    # And the padding left: a batch's max is within a few percent of its mean length.
    waste = sum(float(lengths[b].max()) / float(lengths[b].float().mean()) for b in bucketed[0]) / len(bucketed[0])
    assert waste < 1.05


def test_the_length_order_is_shuffled_across_steps():
    """Buckets sort, but steps come in random order (not short molecules first, long ones last)."""
    lengths = _lengths()
    means = [float(lengths[b].float().mean()) for b in _epoch(lengths, world=1, batches_per_bucket=200)[0]]
    rank_corr = torch.corrcoef(torch.stack([torch.arange(len(means)).float(), torch.tensor(means).argsort().argsort().float()]))[0, 1]
    assert abs(float(rank_corr)) < 0.3


def test_batches_depend_on_seed_epoch_and_rank_alone():
    lengths = _lengths()
    a = _epoch(lengths, world=2, epoch=3, seed=7)
    assert a == _epoch(lengths, world=2, epoch=3, seed=7)  # a fresh sampler (a restarted worker): the same
    assert a != _epoch(lengths, world=2, epoch=4, seed=7)
    assert a != _epoch(lengths, world=2, epoch=3, seed=8)
    assert a[0] != a[1]
    s = DistributedBucketBatchSampler(lengths, 32, num_replicas=2, rank=1, seed=7)
    s.set_epoch(5)
    list(s)  # iterating another epoch first changes nothing
    s.set_epoch(3)
    assert list(s) == a[1]
    # Skipping the first k batches (how a resumed epoch starts) leaves exactly the uninterrupted rest.
    assert list(itertools.islice(s, 4, None)) == a[1][4:]


def test_without_drop_last_every_example_is_used():
    lengths = _lengths(1000)
    ranks = _epoch(lengths, world=3, drop_last=False, batches_per_bucket=4)
    assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) == 11  # ceil(1000 / 96)
    assert set(i for r in ranks for b in r for i in b) == set(range(1000))


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="lower train.batch_size"):
        DistributedBucketBatchSampler(_lengths(50), 32, num_replicas=2, rank=0, seed=0)
    with pytest.raises(ValueError, match="rank must be in"):
        DistributedBucketBatchSampler(_lengths(500), 32, num_replicas=2, rank=2, seed=0)
    with pytest.raises(ValueError, match="shape"):
        DistributedBucketBatchSampler(torch.ones(10, 2), 1, num_replicas=1, rank=0, seed=0)


def test_molecule_lengths_match_the_padded_tokens_and_batches_are_cut_to_their_longest(mol_data):
    m = MoleculeData()
    processed = mol_data[0] / "data/processed/molecule"
    ds = m.load(processed, "train")
    lengths = m.lengths(ds)
    tokens = ds.data["tokens"].long()  # (N, L): the split's widest molecule sets L
    eos = m.input_spec(processed)["vocab"].index(EOS)
    assert lengths.shape == (len(ds),) and int(lengths.max()) == tokens.shape[1]
    rows = torch.arange(len(ds))
    assert torch.equal(tokens[rows, lengths - 1], torch.full((len(ds),), eos))  # each row ends in <eos> …
    assert bool(((torch.arange(tokens.shape[1]) < lengths[:, None]) == (tokens != PAD_ID)).all())  # … then <pad> only
    batch = m.collate_fn()([ds[i] for i in range(10)])
    assert batch.tokens.shape == (10, int(lengths[:10].max()))
    assert torch.equal(batch.tokens, tokens[:10, : int(lengths[:10].max())])
    assert m.lengths(torch.utils.data.Subset(ds, [0, 1])) is None  # not a processed split: plain shuffling


def test_cutting_padding_leaves_the_decoder_likelihood_unchanged(mol_data, tmp_path):
    """Bucketing changes only which molecules share a batch: the loss masks <pad>, and the GRU is
    causal, so a batch padded wider scores every molecule the same."""
    config = tiny_config(tmp_path, preset=MOL_TINY)
    m = MoleculeData()
    processed = mol_data[0] / "data/processed/molecule"
    ds = m.load(processed, "train")
    torch.manual_seed(0)
    model = build_model(config.model, m.input_spec(processed)).eval()
    batch = m.collate_fn()([ds[i] for i in range(16)])
    wide = batch.clone()
    wide.tokens = torch.cat([batch.tokens, torch.full((16, 9), PAD_ID, dtype=batch.tokens.dtype)], 1)
    z = torch.randn(16, config.model.latent_dim, generator=torch.Generator().manual_seed(1))
    scores = [model.decoder.log_prob(model.decode(z, None, t), t) for t in
              (m.model_inputs(b, config.data, train=False, generator=None).target for b in (batch, wide))]
    assert torch.allclose(*scores, rtol=1e-5, atol=1e-4)


def test_train_loader_buckets_when_asked_and_the_modality_gives_lengths(mol_data, tmp_path):
    m = MoleculeData()
    ds = m.load(mol_data[0] / "data/processed/molecule", "train")
    plain = tiny_config(tmp_path, preset=MOL_TINY)
    bucketed = tiny_config(tmp_path, "train.length_buckets=2", preset=MOL_TINY)
    loader, sampler = train_loader(ds, m, plain, per_worker=32, world=2, rank=1)
    assert isinstance(sampler, DistributedSampler) and len(loader) == len(ds) // 2 // 32
    loader, sampler = train_loader(ds, m, bucketed, per_worker=32, world=2, rank=1)
    assert isinstance(sampler, DistributedBucketBatchSampler) and len(loader) == len(ds) // 64
    sampler.set_epoch(1)
    again, resampled = train_loader(ds, m, bucketed, per_worker=32, world=2, rank=1)
    resampled.set_epoch(1)
    pairs = list(zip(loader, again, strict=True))  # what a restarted worker rebuilds: the same batches
    assert all(torch.equal(a.tokens, b.tokens) and torch.equal(a.x, b.x) for a, b in pairs)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_validation_counts_every_molecule_exactly_once_over_the_ranks(mol_data, world):
    """The validation loss is the example-weighted mean summed over ranks: a padded shard (what
    ``DistributedSampler`` does when the split does not divide by the ranks) counts some twice."""
    m = MoleculeData()
    ds = m.load(mol_data[0] / "data/processed/molecule", "val")
    n = max(k for k in range(len(ds) + 1) if k % 6 in (1, 5))  # a split that neither 2 nor 3 divides
    ds = torch.utils.data.Subset(ds, range(n))
    seen = []
    for rank in range(world):
        loader = eval_loader(ds, m, per_worker=7, world=world, rank=rank)
        assert isinstance(loader.sampler, ShardSampler)
        seen += list(loader.sampler)
        assert sum(b.num_graphs for b in loader) == len(loader.sampler)  # the batches hold the shard, once
    assert sorted(seen) == list(range(len(ds)))
    padded = [i for r in range(world) for i in DistributedSampler(ds, num_replicas=world, rank=r, shuffle=False)]
    assert len(padded) > len(ds) or world == 1  # what the padding would have counted


def test_a_split_smaller_than_the_ranks_still_gives_every_rank_a_batch(mol_data):
    m = MoleculeData()
    ds = torch.utils.data.Subset(m.load(mol_data[0] / "data/processed/molecule", "val"), [0, 1])
    loaders = [eval_loader(ds, m, per_worker=4, world=3, rank=r) for r in range(3)]
    assert [len(loader) for loader in loaders] == [1, 1, 1]
    with pytest.raises(ValueError, match="outside"):
        ShardSampler(10, 2, 2)


def test_a_bucketed_epoch_resumes_exactly(mol_data, tmp_path):
    config = tiny_config(tmp_path, "train.length_buckets=2", "model.decoder.word_dropout=0.25", preset=MOL_TINY)
    m = MoleculeData()
    processed = mol_data[0] / "data/processed/molecule"
    torch.manual_seed(0)
    model = build_model(config.model, m.input_spec(processed))
    loader, _ = train_loader(m.load(processed, "train"), m, config, per_worker=32, world=1, rank=0)
    _resume_from_step_3_matches_uninterrupted(model, loader, m, config)


def test_length_buckets_on_data_without_lengths_stop_the_train_stage_in_one_line(project):
    """Fashion-MNIST images are all one size: asking for length buckets there is a mistake, said
    before any Ray worker starts, not silently trained as plain shuffling."""
    from vaeflow import stages
    from vaeflow.config import ConfigError

    config = tiny_config(project, "train.length_buckets=2")
    with pytest.raises(ConfigError, match=r"image examples have none.*train\.length_buckets=0"):
        stages.train(config, stages.Paths.for_modality("image", project), progress=False)

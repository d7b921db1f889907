"""The plain-torch epoch loop, without Ray: it learns, and a NaN stops it with a clear message."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from vaeflow.modalities.image.data import ImageData
from vaeflow.modalities.molecule.data import MoleculeData
from vaeflow.models.vae import build_model
from vaeflow.training.loop import NonFiniteLossError, resolve_precision, run_epoch, seeded_generator
from tests.conftest import MOL_TINY, cpu_has_native_bf16, tiny_config


def _setup(tiny_data, tmp_path, *overrides):
    config = tiny_config(tmp_path, *overrides)
    m = ImageData()
    processed = tiny_data / "data/processed/image"
    torch.manual_seed(0)
    model = build_model(config.model, m.input_spec(processed))
    loader = DataLoader(m.load(processed, "train"), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    return config, m, model, loader


def test_training_lowers_the_validation_bound(tiny_data, tmp_path):
    config, m, model, loader = _setup(tiny_data, tmp_path, "train.epochs=4", "train.lr=0.003")
    val = DataLoader(m.load(tiny_data / "data/processed/image", "val"), batch_size=128)
    cpu = torch.device("cpu")
    evaluate = lambda: run_epoch(model, val, m, config, epoch=0, device=cpu, generator=seeded_generator(cpu, 0, "val"))  # noqa: E731
    before = evaluate()
    opt = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    for epoch in range(config.train.epochs):
        stats = run_epoch(model, loader, m, config, epoch=epoch, device=cpu, optimizer=opt, generator=seeded_generator(cpu, 0, epoch))
    after = evaluate()
    assert set(stats) == {"loss", "recon", "kl", "neg_elbo", "beta"}
    assert stats["beta"] == 1.0  # warm-up (1 epoch in the tiny preset) is over
    assert after["neg_elbo"] < before["neg_elbo"] - 50  # 784 binary pixels: an untrained model sits near 543 nats
    assert after["neg_elbo"] == pytest.approx(after["recon"] + after["kl"])


def test_warmup_starts_at_zero_beta(tiny_data, tmp_path):
    config, m, model, loader = _setup(tiny_data, tmp_path, "loss.warmup_epochs=10")
    cpu = torch.device("cpu")
    opt = torch.optim.Adam(model.parameters())
    stats = run_epoch(model, loader, m, config, epoch=0, device=cpu, optimizer=opt, generator=seeded_generator(cpu, 0))
    assert 0 < stats["beta"] < 0.1
    assert stats["loss"] < stats["neg_elbo"]  # the KL term is down-weighted


def test_nan_loss_names_epoch_and_step(tiny_data, tmp_path):
    config, m, model, loader = _setup(tiny_data, tmp_path)
    with torch.no_grad():
        model.decoder.deconv[-1].bias.fill_(float("nan"))
    cpu = torch.device("cpu")
    with pytest.raises(NonFiniteLossError, match=r"at epoch 3, step 1; training stopped and the last good checkpoint is kept"):
        run_epoch(model, loader, m, config, epoch=2, device=cpu, optimizer=torch.optim.Adam(model.parameters()),
                  generator=seeded_generator(cpu, 0))


def test_bf16_autocast_runs_on_cpu(tiny_data, tmp_path):
    config, m, model, loader = _setup(tiny_data, tmp_path, "train.precision=bf16")
    cpu = torch.device("cpu")
    stats = run_epoch(model, loader, m, config, epoch=0, device=cpu, optimizer=torch.optim.Adam(model.parameters()),
                      generator=seeded_generator(cpu, 0))
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert next(model.parameters()).dtype == torch.float32  # weights stay fp32; only the forward is bf16
    # Validation runs in fp32 whatever the training precision: the same score as an fp32 config's.
    fp32 = tiny_config(tmp_path)
    val = DataLoader(m.load(tiny_data / "data/processed/image", "val"), batch_size=128)
    scores = [run_epoch(model, val, m, c, epoch=0, device=cpu, generator=seeded_generator(cpu, 0, "val"))
              for c in (config, fp32)]
    assert scores[0] == scores[1]


def test_auto_precision_is_bf16_exactly_where_the_cpu_computes_bf16():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert [resolve_precision(p, cpu) for p in ("fp32", "bf16")] == ["fp32", "bf16"]  # asked for: as asked


def _resume_from_step_3_matches_uninterrupted(model, loader, modality, config) -> None:
    """Train one epoch with checkpoints every 3 steps, then rerun it from the step-3 checkpoint: the
    metrics and the final weights must be identical."""
    cpu = torch.device("cpu")
    reseed = lambda step: seeded_generator(cpu, 0, "train", 0, *([step] if step else []))  # noqa: E731
    start = copy.deepcopy(model.state_dict())
    opt = torch.optim.Adam(model.parameters())
    snapshots = {}

    def keep(step, totals):
        snapshots[step] = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), totals)

    full = run_epoch(model, loader, modality, config, epoch=0, device=cpu, optimizer=opt, generator=None,
                     checkpoint_every=3, on_checkpoint=keep, reseed=reseed)
    assert 3 in snapshots and len(loader) not in snapshots  # checkpoints inside the epoch only
    end_weights = copy.deepcopy(model.state_dict())

    torch.manual_seed(12345)  # a restarted worker's global RNG is wherever its start left it
    weights, opt_state, totals = snapshots[3]
    model.load_state_dict(weights)
    opt = torch.optim.Adam(model.parameters())
    opt.load_state_dict(opt_state)
    resumed = run_epoch(model, loader, modality, config, epoch=0, device=cpu, optimizer=opt, generator=None,
                        start_step=3, totals=totals, checkpoint_every=3, on_checkpoint=lambda *a: None, reseed=reseed)
    assert resumed == pytest.approx(full, rel=1e-12)
    assert all(torch.equal(end_weights[k], v) for k, v in model.state_dict().items())
    assert not all(torch.equal(start[k], v) for k, v in model.state_dict().items())


def test_an_epoch_resumed_from_a_mid_epoch_checkpoint_ends_exactly_like_an_uninterrupted_one(tiny_data, tmp_path):
    config, m, model, _ = _setup(tiny_data, tmp_path)
    loader = DataLoader(m.load(tiny_data / "data/processed/image", "train"), batch_size=64, shuffle=False)
    _resume_from_step_3_matches_uninterrupted(model, loader, m, config)


def test_a_resumed_epoch_is_exact_with_dropout_and_word_dropout(mol_data, tmp_path):
    """nn.Dropout and word dropout draw from torch's global RNG, which the loop seeds from the
    step's generator, so a model with dropout also resumes exactly."""
    config = tiny_config(tmp_path, "model.encoder.dropout=0.2", "model.decoder.dropout=0.3",
                         "model.decoder.word_dropout=0.25", preset=MOL_TINY)
    m = MoleculeData()
    processed = mol_data[0] / "data/processed/molecule"
    torch.manual_seed(0)
    model = build_model(config.model, m.input_spec(processed))
    loader = DataLoader(m.load(processed, "train"), batch_size=32, shuffle=False, collate_fn=m.collate_fn())
    _resume_from_step_3_matches_uninterrupted(model, loader, m, config)

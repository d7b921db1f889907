"""The VRNN family (Chung et al. 2015): the masked per-step ELBO, the KL of two Gaussians, the IWAE
bound over whole latent paths, generation of any length, per-step anomaly scores and their
localisation, and the pipeline through Ray Train (2 workers), MLflow and the pyfunc model."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from vaeflow import config as cfg
from vaeflow import stages, tracking
from vaeflow.modalities.base import ModelInputs
from vaeflow.modalities.timeseries import anomaly
from vaeflow.modalities.timeseries.data import (Scaler, Stationariser, TimeSeriesData, WindowDataset, to_real_units,
                                                windows_to_inputs)
from vaeflow.modalities.timeseries.task import TimeSeriesTask, sample_length
from vaeflow.models.distributions import DiagonalGaussian
from vaeflow.models.families import build_model, family_of
from vaeflow.models.families.vrnn import VRNNFamily, gaussian_kl
from vaeflow.training import checkpoint
from tests.test_timeseries import TS_TINY, _sines

SPEC = {"channels": 2, "length": 8, "num_classes": 0, "channel_names": ["a", "b"], "raw_channels": 2,
        "channels_kept": [0, 1], "scaler": Scaler("minmax", (1.0, -2.0), (10.0, 4.0)).to_dict()}


def _config(*overrides: str, **sections):
    data = {"modality": "timeseries", "data": {"dataset": "stocks"},
            "model": {"family": "vrnn", "latent_dim": 3, "vrnn": {"hidden": 16, "feature": 8}}} | sections
    return cfg.resolve(data, list(overrides))


def _model(config=None, spec=SPEC, seed=0):
    torch.manual_seed(seed)
    return build_model((config or _config()).model, spec).eval()


def _padded(n=6, t=8, keep=5, seed=0) -> ModelInputs:
    """Windows whose last t − keep steps are padding (NaN, as prepare stores it)."""
    x = torch.as_tensor(_sines(n, t=t, c=2, seed=seed))
    x[:, keep:] = float("nan")
    x, target = windows_to_inputs(x)
    return ModelInputs(x=x, target=target)


@pytest.fixture
def one_thread():
    """In-process training on tiny tensors with one torch thread (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the objective ---------------------------------------------------------------------------------


def test_padding_is_masked_from_both_terms():
    config, model = _config("loss.free_bits=0.1"), _model()
    inputs = _padded()
    terms = lambda i: VRNNFamily().terms(model, i, config=config, generator=torch.Generator().manual_seed(1))  # noqa: E731
    base = terms(inputs)
    junk = inputs.x.clone()
    junk[:, 5:] = torch.randn(junk[:, 5:].shape) * 100  # whatever the encoder input holds at padded steps
    other = terms(ModelInputs(x=junk, target=inputs.target))
    for name in ("recon", "kl", "kl_objective", "neg_elbo"):
        assert torch.equal(base[name], other[name]), name
    trimmed = terms(ModelInputs(x=inputs.x[:, :5], target=inputs.target[:, :5]))  # the same series, unpadded
    assert torch.allclose(base["neg_elbo"], trimmed["neg_elbo"]) and torch.allclose(base["kl"], trimmed["kl"])
    observed = inputs.x.clone()
    observed[:, 2] += 0.5  # an observed step does count
    changed = terms(ModelInputs(x=observed, target=windows_to_inputs(torch.where(inputs.target.isnan(), inputs.target, observed))[1]))
    assert not torch.allclose(base["neg_elbo"], changed["neg_elbo"])
    assert base["kl_objective"] >= base["kl"]  # free bits per step and dimension only raise the KL the optimiser sees


def test_kl_of_two_gaussians_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    q = DiagonalGaussian(torch.randn(4, 5, 3, generator=g), torch.randn(4, 5, 3, generator=g))
    p = DiagonalGaussian(torch.randn(4, 5, 3, generator=g), torch.randn(4, 5, 3, generator=g))
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(q.mu, q.std), torch.distributions.Normal(p.mu, p.std))
    assert torch.allclose(gaussian_kl(q, p), expected, atol=1e-5)
    assert torch.allclose(gaussian_kl(q, q), torch.zeros(()), atol=1e-6)


def test_iwae_with_one_path_is_the_elbo_on_average_and_more_paths_tighten_it():
    config = _config("model.vrnn.scale_init=0.5")
    model, family = _model(config), VRNNFamily()
    # A posterior away from the prior (means 1, σ ≈ 0.4): far from the true posterior, so the bounds differ.
    model.posterior_net[-1].bias.data.copy_(torch.tensor([1.0, 1.0, 1.0, -2.0, -2.0, -2.0]))
    inputs, draws = _padded(n=4), 250
    many = ModelInputs(x=inputs.x.repeat(draws, 1, 1), target=inputs.target.repeat(draws, 1, 1))  # (draws·N, T, C)
    with torch.no_grad():
        k1 = family.log_likelihood(model, many, k=1, generator=torch.Generator().manual_seed(0))  # one path each
        neg_elbo = family.terms(model, many, config=config, generator=torch.Generator().manual_seed(1))["neg_elbo"]
        k64 = family.log_likelihood(model, inputs, k=64, generator=torch.Generator().manual_seed(2))
    # log p(x,z) − log q(z|x) of one path has the ELBO as its mean (the terms use the KL in closed form).
    assert abs(k1.mean() + neg_elbo) < 4 * k1.std() / (draws * 4) ** 0.5, (k1.mean(), neg_elbo)
    per_example = k1.view(draws, 4).mean(0)
    assert (k64 > per_example + 0.1).all() and torch.isfinite(k64).all(), (k64, per_example)


def test_an_epoch_resumed_mid_way_ends_exactly_like_an_uninterrupted_one(one_thread):
    """The loop's mid-epoch resume (what a restarted Ray worker runs) is exact for the VRNN too: its
    per-step draws come from the step's generator."""
    from torch.utils.data import DataLoader

    from tests.test_loop import _resume_from_step_3_matches_uninterrupted

    x = _sines(128, t=8, c=2)
    loader = DataLoader(WindowDataset(x, np.zeros(len(x), dtype=np.int64)), batch_size=32, shuffle=False)
    _resume_from_step_3_matches_uninterrupted(_model().train(), loader, TimeSeriesData(), _config("loss.free_bits=0.05"))


# --- inference verbs, generation of any length -------------------------------------------------------


def test_encode_reconstruct_and_sample_shapes_and_determinism():
    model, family = _model(), VRNNFamily()
    x = _padded(n=5).x
    z = family.encode(model, x)
    assert z.shape == (5, 8, 3) and torch.equal(z, family.encode(model, x))
    assert family.reconstruct(model, x).shape == (5, 8, 2) and family.decode(model, z).shape == (5, 8, 2)
    draw = lambda **kw: family.sample(model, 4, generator=torch.Generator().manual_seed(3), **kw)  # noqa: E731
    assert draw().shape == (4, 8, 2) and torch.equal(draw(), draw())  # the training window by default
    long = draw(length=80)
    assert long.shape == (4, 80, 2) and torch.isfinite(long).all()
    assert torch.equal(long[:, :8], draw())  # the same roll-out, just further
    assert draw(mean=False).shape == (4, 8, 2) and not torch.equal(draw(mean=False), draw())


def test_a_conditional_vrnn_starts_from_its_label():
    spec = SPEC | {"num_classes": 3}
    model, family = _model(_config("model.conditional=true"), spec), VRNNFamily()
    out = [family.sample(model, 2, labels=torch.full((2,), c), generator=torch.Generator().manual_seed(0)) for c in (0, 1)]
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(cfg.ConfigError, match="no class labels"):
        _model(_config("model.conditional=true"), SPEC)


def test_samples_longer_than_the_window_in_real_units(tmp_path):
    config = _config("sample.length=20", "sample.n=6")
    model = _model(config)
    metrics = TimeSeriesTask(TimeSeriesData()).write_samples(model, config, None, tmp_path, torch.Generator().manual_seed(0))
    with np.load(tmp_path / "samples.npz") as f:
        assert f["samples"].shape == (6, 20, 2)
        np.testing.assert_allclose(f["samples"], Scaler.from_dict(SPEC["scaler"]).inverse(f["scaled"]), rtol=1e-5)
    assert metrics["n_samples"] == 6
    long = TimeSeriesTask(TimeSeriesData()).windows_of_long_samples(model, 25, torch.Generator().manual_seed(0))
    assert long.shape == (25, 8, 2)


def test_a_whole_window_vae_rejects_a_longer_sample_length_in_one_line():
    vae = build_model(cfg.ModelConfig(latent_dim=2, encoder=cfg.ModuleSpec("gru"), decoder=cfg.ModuleSpec("gru")), SPEC)
    assert sample_length(vae, None) == {} and sample_length(vae, 8) == {}
    with pytest.raises(cfg.ConfigError, match=r"sample.length: the vae family generates whole 8-step windows only") as exc:
        sample_length(vae, 48)
    assert "\n" not in str(exc.value)
    assert sample_length(_model(), 48) == {"length": 48}


@pytest.mark.parametrize(("override", "message"), [
    ("model.vrnn.hidden=0", "model.vrnn.hidden must be ≥ 1, got 0"),
    ("model.vrnn.scale_init=0", "model.vrnn.scale_init must be > 0"),
    ("model.vrnn.layers=2", "unknown key model.vrnn.layers in model.vrnn; allowed keys: hidden, feature, scale_init"),
    ("sample.length=0", "sample.length must be ≥ 1"),
])
def test_bad_vrnn_and_sample_keys_are_one_line_config_errors(override, message):
    with pytest.raises(cfg.ConfigError) as exc:
        _config(override)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_the_vrnn_is_for_time_series_only():
    with pytest.raises(cfg.ConfigError, match="vrnn models time series"):
        build_model(_config().model, {"channels": 1, "height": 28, "width": 28})


# --- per-step anomaly scores ------------------------------------------------------------------------


def test_per_step_scores_add_up_and_reach_the_anomaly_csv(tmp_path):
    model = _model()
    inputs = _padded(n=3)
    scores = VRNNFamily().anomaly_scores(model, inputs, k=4, generator=torch.Generator().manual_seed(0))
    steps = scores["recon_prob_steps"]
    assert steps.shape == (3, 8) and steps[:, 5:].isnan().all() and steps[:, :5].isfinite().all()
    assert torch.allclose(steps.nansum(1), scores["recon_prob"]) and (scores["neg_elbo"] >= scores["recon_prob"]).all()

    path = tmp_path / "model.pt"
    checkpoint.save(path, model=model.state_dict(), config=_config().to_dict(), input_spec=SPEC, epoch=1, mlflow_run_id="")
    loaded, config, _ = checkpoint.load_model(path)
    series = Scaler.from_dict(SPEC["scaler"]).inverse(_sines(1, t=20, c=2)[0])
    (tmp_path / "s.csv").write_text("a,b\n" + "\n".join(f"{a},{b}" for a, b in series))
    summary = anomaly.score_csv(loaded, config, tmp_path / "s.csv", tmp_path / "out.csv", k=2, stride=4)
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["windows"] == 4
    per_step = np.array([[float(v) for v in r["step_scores"].split()] for r in rows])  # (windows, T)
    assert per_step.shape == (4, 8)
    np.testing.assert_allclose(per_step.sum(1), [float(r["recon_prob_score"]) for r in rows], rtol=1e-4, atol=1e-3)
    i, t = np.unravel_index(per_step.argmax(), per_step.shape)
    assert summary["most_anomalous_step_row"] == i * 4 + t


# Measured 14 s with one torch thread on 2 shared cores (in-process training, no Ray; several threads
# fighting over the cores made it 4 minutes): -m slow.
@pytest.mark.slow
def test_per_step_score_peaks_at_an_injected_spike(one_thread):
    """A VRNN fitted on sine windows; a spike (+1 in [0.1, 0.9]-scaled data) at a known step of each
    test window; the per-step score's argmax lands within one step of it (the step after the spike
    reads it through h_t). With +0.5 the first step, which has no past to predict from, often
    scores higher."""
    from torch.utils.data import DataLoader

    from vaeflow.training.loop import run_epoch

    config = _config("model.latent_dim=2", "model.vrnn.hidden=32", "model.vrnn.feature=16", "train.batch_size=64")
    spec = SPEC | {"length": 24}
    model = _model(config, spec)
    x = _sines(512, c=2, shared=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(WindowDataset(x, np.zeros(len(x), dtype=np.int64)), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    for epoch in range(8):
        run_epoch(model.train(), loader, TimeSeriesData(), config, epoch=epoch, device=torch.device("cpu"),
                  generator=torch.Generator().manual_seed(epoch), optimizer=opt)
    test = _sines(100, c=2, seed=5, shared=True)
    rng = np.random.default_rng(6)
    spikes, channels = rng.integers(2, 22, size=len(test)), rng.integers(0, 2, size=len(test))
    test[np.arange(len(test)), spikes, channels] += 1.0
    scores = anomaly.anomaly_scores(model, torch.as_tensor(test), k=8, generator=torch.Generator().manual_seed(0))
    hits = np.abs(scores.recon_prob_steps.argmax(1) - spikes) <= 1
    assert hits.mean() >= 0.8, hits.mean()


# --- the pipeline ----------------------------------------------------------------------------------


def _tiny(tmp_path, *overrides):
    return cfg.load(TS_TINY, overrides=[
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_location={tmp_path}/mlartifacts",
        f"train.storage_path={tmp_path}/ray_results", "model.family=vrnn", "model.vrnn.hidden=16",
        "model.vrnn.feature=8", *overrides])


# Measured 152 s and 478 s on 2 cores shared with four other sessions (load average 19 and 30); the
# unloaded time is not known (the image pipeline test of the same shape takes about 35 s per fit): -m slow.
@pytest.mark.slow
def test_vrnn_pipeline_two_workers_one_run_long_samples_and_the_pyfunc(tmp_path, ray_cluster):
    import mlflow

    config = _tiny(tmp_path, "train.epochs=2", "sample.length=48")
    paths = stages.Paths.for_modality("timeseries", tmp_path)
    stages.prepare(config, paths, progress=False)
    trained = stages.train(config, paths, progress=False)
    assert trained["epochs"] == 2 and np.isfinite(trained["best_val_neg_elbo"])
    assert "final_val_kl" in trained

    assert stages.sample(config, paths)["n_samples"] == 16
    with np.load(paths.samples / "samples.npz") as f:
        samples, scaled = f["samples"], f["scaled"]
    assert samples.shape == (16, 48, 6)  # twice the 24-step training window
    spec = json.loads((paths.processed / "spec.json").read_text())  # the tiny preset takes log-returns
    np.testing.assert_array_equal(samples, to_real_units(spec, scaled).astype(np.float32))  # real units (prices, volume)

    ev = stages.evaluate(config, paths, progress=False)
    for key in ("test_neg_elbo", "test_kl", "discriminative_score_train", "discriminative_score_train_10x",
                "predictive_score_train", "discriminative_score_test", "acf_distance_train"):
        assert np.isfinite(ev[key]), key
    # The IWAE NLL over whole paths is no looser than the −ELBO on the same test series.
    assert np.isfinite(ev["test_nll_iwae"]) and ev["test_nll_iwae"] <= ev["iwae_subset_neg_elbo"] + 3 * ev["test_nll_iwae_sem"]

    client = tracking.client(config.tracking)
    run_id = json.loads((paths.model / "run.json").read_text())["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.data.params["model.family"] == "vrnn" and run.data.params["model.vrnn.hidden"] == "16"
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_kl")) == [1, 2]
    assert run.data.metrics["discriminative_score_train_10x"] == pytest.approx(ev["discriminative_score_train_10x"])
    assert {"evaluation/real_vs_generated.png", "evaluation/reconstructions.png"} <= {
        a.path for a in client.list_artifacts(run_id, "evaluation")}

    served = mlflow.pyfunc.load_model(f"models:/{config.tracking.registered_model}@{config.tracking.alias}")
    test = TimeSeriesData().load(paths.processed, "test")
    x = np.nan_to_num(test.x[:3].numpy())
    model, _, _ = checkpoint.load_model(paths.model / "model.pt")
    assert isinstance(family_of(model), VRNNFamily)
    codes = served.predict(x)
    assert codes.shape == (3, 24, 4)  # per-step posterior means (N, T, latent_dim)
    np.testing.assert_allclose(codes, family_of(model).encode(model, torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    assert served.predict(x, params={"mode": "reconstruct"}).shape == (3, 24, 6)
    assert served.predict(x, params={"mode": "sample", "n": 5, "seed": 1}).shape == (5, 24, 6)


def test_anomaly_rows_of_a_transformed_series_start_after_the_anchor_row(tmp_path):
    """With data.transform: log_return a window of changes covers the rows after its anchor row, so
    `vaeflow anomaly` names those rows (window i: rows 1 + i·stride …), and a file needs one row more
    than the window."""
    spec = SPEC | {"stationary": Stationariser("log_return", "none", (1.0, 1.0)).to_dict()}
    path = tmp_path / "model.pt"
    checkpoint.save(path, model=_model().state_dict(), config=_config().to_dict(), input_spec=spec, epoch=1,
                    mlflow_run_id="")
    loaded, config, _ = checkpoint.load_model(path)
    prices = np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, (20, 2)), axis=0)) * 100  # (20, 2) > 0
    (tmp_path / "p.csv").write_text("a,b\n" + "\n".join(f"{a},{b}" for a, b in prices))
    summary = anomaly.score_csv(loaded, config, tmp_path / "p.csv", tmp_path / "out.csv", k=2, stride=4)
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["windows"] == 3  # 19 log-returns, windows of 8 every 4 steps
    assert [(int(r["start_row"]), int(r["end_row"])) for r in rows] == [(1, 8), (5, 12), (9, 16)]
    per_step = np.array([[float(v) for v in r["step_scores"].split()] for r in rows])
    i, t = np.unravel_index(per_step.argmax(), per_step.shape)
    assert summary["most_anomalous_step_row"] == 1 + i * 4 + t
    (tmp_path / "short.csv").write_text("a,b\n" + "\n".join(f"{a},{b}" for a, b in prices[:8]))
    with pytest.raises(anomaly.SeriesDataError, match="fewer than the model's window of 8 steps plus the 1 row"):
        anomaly.score_csv(loaded, config, tmp_path / "short.csv", tmp_path / "out2.csv", k=2)

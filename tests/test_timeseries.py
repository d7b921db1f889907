"""Time-series modality: windowing and scaling, bad input with counts, likelihood masking, TimeGAN
scores, anomaly scores and the ``vaeflow anomaly`` command, and the pipeline through Ray and MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from vaeflow import cli, stages, tracking
from vaeflow import config as cfg
from vaeflow.config import ModelConfig, ModuleSpec
from vaeflow.modalities.timeseries.config import TimeSeriesDataConfig as DataConfig
from vaeflow.modalities.timeseries.data import (RawSeries, Scaler, SeriesDataError, TimeSeriesData, WindowDataset,
                                     build_splits, read_numeric_csv, sliding_windows, to_real_units)
from vaeflow.modalities.timeseries import anomaly
from vaeflow.modalities.timeseries import metrics as tsm
from vaeflow.models.vae import build_model
from vaeflow.training import checkpoint
from tests.conftest import ROOT

TS_TINY = ROOT / "configs/timeseries/tiny.yaml"


def _counts(**kw):
    return dict.fromkeys(("nonfinite_values", "imputed_values", "dropped_steps", "series_all_missing"), 0) | kw


# --- data ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["minmax", "standard"])
def test_windows_and_scaler_round_trip(kind):
    rng = np.random.default_rng(0)
    series = rng.normal(size=(50, 3)) * [1.0, 100.0, 1e6] + [0.0, -5.0, 3e7]
    scaler, constant = Scaler.fit(series, kind)
    assert not constant.any()
    windows = sliding_windows(scaler.transform(series), window=8, stride=3)
    assert windows.shape == ((50 - 8) // 3 + 1, 8, 3)
    back = scaler.inverse(windows)
    for i, w in enumerate(back):
        np.testing.assert_allclose(w, series[3 * i : 3 * i + 8], rtol=1e-10, atol=1e-6)
    again = Scaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_allclose(again.inverse(windows), back)


def test_time_split_no_leakage_and_scaler_fitted_on_train_only():
    series = np.arange(200, dtype=float)[:, None] * [1.0, 2.0]  # the value is the time step
    config = DataConfig(window=10, stride=1, val_fraction=0.2, test_fraction=0.2)
    splits, scaler, counts = build_splits(RawSeries(["a", "b"], series=series), config, seed=0)
    steps = {s: scaler.inverse(x)[..., 0] for s, (x, _, _) in splits.items()}
    assert steps["train"].max() < steps["val"].min() and steps["val"].max() < steps["test"].min()
    assert splits["train"][0].min() == 0 and splits["train"][0].max() == pytest.approx(1)  # fitted on train
    assert splits["test"][0].min() > 1  # later values are not squeezed into the training range
    assert [len(x) for x, _, _ in splits.values()] == [120 - 9, 40 - 9, 40 - 9]
    assert (splits["train"][1] == -1).all() and (splits["train"][2] == 10).all()


def test_shuffled_split_is_the_papers_protocol_and_seeded():
    series = np.arange(200, dtype=float)[:, None] * [1.0, 2.0]  # the value is the time step
    config = DataConfig(window=10, stride=1, val_fraction=0.2, test_fraction=0.2, split="shuffled")
    splits, scaler, _ = build_splits(RawSeries(["a", "b"], series=series), config, seed=0)
    starts = {s: scaler.inverse(x)[:, 0, 0] for s, (x, _, _) in splits.items()}
    # Every window of the whole series exactly once, scaled together, dealt out by the fractions.
    assert sorted(np.concatenate(list(starts.values())).round().astype(int)) == list(range(191))
    assert [len(v) for v in starts.values()] == [191 - 38 - 38, 38, 38]
    assert np.concatenate([x for x, _, _ in splits.values()]).max() == pytest.approx(1)
    assert starts["test"].min() < starts["train"].max()  # shuffled, not in time order
    again, _, _ = build_splits(RawSeries(["a", "b"], series=series), config, seed=0)
    other, _, _ = build_splits(RawSeries(["a", "b"], series=series), config, seed=1)
    assert np.array_equal(again["val"][0], splits["val"][0]) and not np.array_equal(other["val"][0], splits["val"][0])
    with pytest.raises(SeriesDataError, match="leave none for val, test"):
        build_splits(RawSeries(["a", "b"], series=series[:11]), config, seed=0)  # 2 windows: 20 % of 2 rounds to 0

def test_missing_values_impute_drop_reject_with_counts():
    series = np.tile(np.arange(60, dtype=float)[:, None], (1, 2))
    series[[0, 5, 6], 0] = np.nan
    series[10, 1] = np.inf
    raw = RawSeries(["a", "b"], series=series)
    splits, _, counts = build_splits(raw, DataConfig(window=5, missing="impute", val_fraction=0.2, test_fraction=0.2), 0)
    assert counts["nonfinite_values"] == 4 and counts["imputed_values"] == 4 and counts["dropped_steps"] == 0
    assert all(np.isfinite(x).all() for x, _, _ in splits.values())
    _, _, counts = build_splits(raw, DataConfig(window=5, missing="drop", val_fraction=0.2, test_fraction=0.2), 0)
    assert counts["dropped_steps"] == 4 and counts["imputed_values"] == 0
    with pytest.raises(SeriesDataError, match="4 NaN/inf values .*step 0, channel 0.*data.missing"):
        build_splits(raw, DataConfig(window=5, missing="reject"), 0)


def test_sets_of_series_constant_channels_short_and_unequal_lengths():
    rng = np.random.default_rng(1)

    def series(t):
        s = rng.normal(size=(t, 3))
        s[:, 2] = 7.0  # constant channel
        return s

    train = [series(t) for t in (12, 12, 4, 12, 9)]
    raw = RawSeries(["a", "b", "c"], splits={"train": (train, np.array([0, 1, 0, 1, 0])),
                                             "test": ([series(12), series(3)], np.array([1, 0]))},
                    class_names=["x", "y"])
    splits, scaler, counts = build_splits(raw, DataConfig(window=8, stride=4, val_fraction=0.2, short_series="drop"), 0)
    assert counts["constant_channels_dropped"] == 1 and counts["constant_channels"] == ["c"]
    assert counts["short_series_dropped"] == 2 and splits["train"][0].shape[2] == 2 and len(scaler.offset) == 2
    splits, _, counts = build_splits(raw, DataConfig(window=8, stride=4, val_fraction=0.2, short_series="pad",
                                                     constant_channels="keep"), 0)
    assert counts["short_series_padded"] == 2 and splits["test"][2].tolist() == [8, 8, 3]
    assert np.isnan(splits["test"][0][-1, 3:]).all() and np.isfinite(splits["test"][0][-1, :3]).all()
    assert (splits["train"][0][..., 2] == 0).all()  # kept constant channel scales to 0
    # A null window keeps whole series, padding the shorter ones to the longest.
    splits, _, counts = build_splits(raw, DataConfig(window=None, val_fraction=0.2), 0)
    assert counts["unequal_lengths_padded"] == 3 and splits["train"][0].shape[1] == 12
    for policy, key in (("reject", "short_series"), ("reject", "constant_channels")):
        with pytest.raises(SeriesDataError, match=f"data.{key}"):
            build_splits(raw, DataConfig(window=8, **{key: policy}) if key == "short_series"
                         else DataConfig(window=8, short_series="pad", constant_channels=policy), 0)


def test_csv_reader_names_bad_lines():
    values, names = read_numeric_csv("a,b\n1,2\n3,\n", name="f.csv")
    assert names == ["a", "b"] and np.isnan(values[1, 1])
    with pytest.raises(SeriesDataError, match="f.csv: line 3 has 1 fields, expected 2"):
        read_numeric_csv("a,b\n1,2\n3\n", name="f.csv")
    with pytest.raises(SeriesDataError, match="line 2 holds a value that is not a number"):
        read_numeric_csv("1,2\n3,x\n", name="f.csv")
    with pytest.raises(SeriesDataError, match="2 channels, but the model was trained on 6"):
        read_numeric_csv("1,2\n", name="f.csv", channels=6)


def test_ucr_set_from_aeon_with_labels(tmp_path):
    pytest.importorskip("aeon")
    modality = TimeSeriesData()
    counts = modality.prepare(DataConfig(dataset="ucr-japanesevowels", window=None, val_fraction=0.2), 0, tmp_path / "p")
    spec = modality.input_spec(tmp_path / "p")
    assert spec["num_classes"] == 9 and spec["channels"] == 12 and counts["unequal_lengths_padded"] > 0
    test = modality.load(tmp_path / "p", "test")
    assert len(test) == counts["n_test"] == 370 and (test.lengths < spec["length"]).any()


# --- models ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", ["gru", "conv1d", "timevae"])
def test_padding_is_masked_out_of_the_likelihood(decoder):
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=2, encoder=ModuleSpec("conv1d", {"channels": [4]}),
                                    decoder=ModuleSpec(decoder)), {"channels": 2, "length": 6})
    out = model.decode(torch.randn(3, 2))
    target = torch.randn(3, 6, 2)
    padded = target.clone()
    padded[:, 4:] = float("nan")
    lp = model.decoder.log_prob(out, padded)
    trimmed = type(out)(params=out.params[:, :4], scale=out.scale)
    assert torch.allclose(lp, model.decoder.log_prob(trimmed, target[:, :4]))
    assert torch.isfinite(lp).all()


def test_timevae_components_add_up_to_the_mean():
    spec = {"channels": 2, "length": 15}
    model = build_model(ModelConfig(latent_dim=3, encoder=ModuleSpec("gru", {"hidden": 4}),
                                    decoder=ModuleSpec("timevae", {"seasons": [[4, 3]], "residual_channels": []})), spec)
    z = torch.randn(5, 3)
    parts = model.decoder.components(z)
    assert set(parts) == {"trend", "season0"}
    assert torch.allclose(sum(parts.values()), model.decode(z).params)
    season = parts["season0"]
    assert torch.equal(season[:, 0], season[:, 2]) and torch.equal(season[:, 0], season[:, 13])  # 4 seasons of 3 steps, repeating
    assert not torch.equal(season[:, 0], season[:, 3])


# --- metrics ---------------------------------------------------------------------------------------


def _sines(n: int, t: int = 24, c: int = 4, seed: int = 0, shared: bool = False) -> np.ndarray:
    """Noise-free sine windows in [0.1, 0.9]; ``shared``: one frequency and phase for all channels."""
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.1, 0.3, size=(n, 1, 1 if shared else c))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1 if shared else c))
    x = 0.5 + 0.4 * np.sin(freq * np.arange(t)[None, :, None] + phase)  # (n, t, c or 1)
    return np.ascontiguousarray(np.broadcast_to(x, (n, t, c)), dtype=np.float32)


def test_discriminative_score_near_zero_for_held_out_real_and_high_for_noise():
    real = _sines(800)
    same = tsm.discriminative_score(real[:400], real[400:], seeds=2, steps=600)
    noise = tsm.discriminative_score(real[:400], np.random.default_rng(1).normal(size=(400, 24, 4)).astype(np.float32),
                                     seeds=1, steps=600)
    assert same.mean < 0.1 and noise.mean > 0.4, (same, noise)
    assert len(same.values) == 2 and len(noise.values) == 1


def test_posthoc_fits_run_on_one_thread_and_restore_the_callers():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        head = tsm._seeded_model(0, 2, 1, 1, per_step=False)
        head.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
        x = torch.rand(8, 5, 2)
        tsm._fit(head, x, torch.ones(8, 1), torch.nn.functional.binary_cross_entropy_with_logits, steps=2, batch=4,
                 generator=torch.Generator().manual_seed(0))
        assert seen == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_predictive_score_and_autocorrelation_distance_rank_real_over_noise():
    real = _sines(600, c=4, shared=True) * [1.0, 0.8, 0.6, 0.4]  # the last channel follows the others
    noise = np.random.default_rng(2).random((600, 24, 4), dtype=np.float32)
    on_real = tsm.predictive_score(real[:300], real[300:], seeds=1, steps=600)
    on_noise = tsm.predictive_score(noise, real[300:], seeds=1, steps=600)
    assert on_real.mean < 0.5 * on_noise.mean, (on_real, on_noise)
    assert tsm.autocorrelation_distance(real[:300], real[300:]) < 0.05 < tsm.autocorrelation_distance(real, noise)


def test_auroc_and_best_f1():
    assert tsm.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # sklearn's value
    assert tsm.auroc([1, 1, 1], [0, 1, 0]) == 0.5
    f1, threshold = tsm.best_f1([0.1, 0.9, 0.8, 0.2], [0, 1, 1, 0])
    assert f1 == 1.0 and threshold == 0.8


def _trained_sine_vae(tmp_path):
    """A small conv1d VAE fitted on sine windows in-process (the trainer's own epoch loop, no Ray)."""
    from torch.utils.data import DataLoader

    from vaeflow.training.loop import run_epoch

    config = cfg.from_dict(cfg.ExperimentConfig, {
        "modality": "timeseries", "data": {"dataset": "stocks"},
        "model": {"latent_dim": 4, "encoder": {"name": "conv1d", "channels": [16, 16]},
                  "decoder": {"name": "conv1d", "channels": [16, 16]}},
        "train": {"epochs": 30, "batch_size": 64}, "evaluate": {"anomaly_k": 8}})
    x = _sines(1024, c=2, shared=True)
    spec = {"channels": 2, "length": 24, "num_classes": 0, "channel_names": ["a", "b"], "raw_channels": 2,
            "channels_kept": [0, 1], "scaler": Scaler("minmax", (0.0, 0.0), (1.0, 1.0)).to_dict()}
    torch.manual_seed(0)
    model = build_model(config.model, spec)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(WindowDataset(x, np.zeros(len(x), dtype=np.int64)), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    for epoch in range(config.train.epochs):
        run_epoch(model, loader, TimeSeriesData(), config, epoch=epoch, device=torch.device("cpu"),
                  generator=torch.Generator().manual_seed(epoch), optimizer=opt)
    model.eval()
    path = tmp_path / "model.pt"
    checkpoint.save(path, model=model.state_dict(), config=config.to_dict(), input_spec=spec, epoch=1, mlflow_run_id="")
    return model, path


@pytest.fixture(scope="module")
def sine_vae(tmp_path_factory):
    return _trained_sine_vae(tmp_path_factory.mktemp("sine_vae"))


def test_anomaly_auroc_on_planted_anomalies(sine_vae):
    model, _ = sine_vae
    x = _sines(400, c=2, seed=5, shared=True)
    rng = np.random.default_rng(6)
    is_anomaly = np.zeros(len(x), dtype=bool)
    is_anomaly[rng.choice(len(x), 40, replace=False)] = True
    for i in np.flatnonzero(is_anomaly):  # a spike, or one channel inverted for 8 steps (channels move together)
        t, c = rng.integers(2, 16), rng.integers(0, 2)
        if rng.random() < 0.5:
            x[i, t, c] += 1.0
        else:
            x[i, t : t + 8, c] = 1 - x[i, t : t + 8, c]
    scores = anomaly.anomaly_scores(model, torch.as_tensor(x), k=8, generator=torch.Generator().manual_seed(0))
    for s in (scores.recon_prob, scores.neg_elbo):
        assert tsm.auroc(s, is_anomaly) > 0.9
    assert tsm.best_f1(scores.neg_elbo, is_anomaly)[0] > 0.7


def _write(path, rows):
    path.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


def test_anomaly_command_scores_a_csv_and_rejects_bad_files(sine_vae, tmp_path, capsys):
    _, model_file = sine_vae
    good = _write(tmp_path / "good.csv", [["a", "b"], *(_sines(1, t=40, c=2, shared=True)[0].round(5).tolist())])
    proc = subprocess.run([sys.executable, "-m", "vaeflow.cli", "anomaly", str(good), "--model", str(model_file),
                           "--stride", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["windows"] == (40 - 24) // 2 + 1
    rows = (tmp_path / "good.csv.scores.csv").read_text().splitlines()
    assert rows[0].startswith("window,start_row,end_row") and len(rows) == result["windows"] + 1

    bad = {
        "ragged.csv": ([[0.1, 0.2], [0.3], [0.4, 0.5]], "line 2 has 1 fields, expected 2"),
        "nan.csv": ([[0.1, 0.2]] * 5 + [[0.3, "nan"]] + [[0.1, 0.2]] * 30, "1 missing or non-finite values"),
        "three.csv": ([[0.1, 0.2, 0.3]] * 30, "3 channels, but the model was trained on 2"),
        "short.csv": ([[0.1, 0.2]] * 5, "5 rows, fewer than the model's window of 24"),
    }
    for name, (rows, message) in bad.items():
        assert cli.main(["anomaly", str(_write(tmp_path / name, rows)), "--model", str(model_file)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


# --- the pipeline through Ray Train and MLflow -----------------------------------------------------


def test_timeseries_pipeline_ray_mlflow(tmp_path, ray_cluster):
    config = cfg.load(TS_TINY, overrides=[
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_location={tmp_path}/mlartifacts",
        f"train.storage_path={tmp_path}/ray_results"])
    paths = stages.Paths.for_modality("timeseries", tmp_path)
    prepared = stages.prepare(config, paths, progress=False)
    assert prepared["n_train"] > prepared["n_val"] > 0 and prepared["rejected"] == 0
    trained = stages.train(config, paths, progress=False)
    assert trained["epochs"] == 1
    sampled = stages.sample(config, paths)
    with np.load(paths.samples / "samples.npz") as f:
        samples, scaled = f["samples"], f["scaled"]
    assert samples.shape == (16, 24, 6) and sampled["n_samples"] == 16
    spec = json.loads((paths.processed / "spec.json").read_text())
    np.testing.assert_array_equal(samples, to_real_units(spec, scaled).astype(np.float32))  # real units (prices, volume)
    assert (paths.samples / "samples_preview.csv").is_file() and (paths.samples / "samples.png").is_file()
    ev = stages.evaluate(config, paths, progress=False)
    for key in ("discriminative_score_train", "predictive_score_train", "discriminative_score_test", "acf_distance_test", "acf_distance_train"):
        assert np.isfinite(ev[key])
    assert 0 <= ev["discriminative_score_train"] <= 0.5 and ev["posthoc_seeds"] == 2

    client: MlflowClient = tracking.client(config.tracking)
    run_id = json.loads((paths.model / "run.json").read_text())["mlflow_run_id"]
    assert client.get_run(run_id).data.metrics["predictive_score_train"] == pytest.approx(ev["predictive_score_train"])
    logged = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/real_vs_generated.png", "evaluation/pca_tsne.png", "evaluation/autocorrelation.png"} <= logged
    assert {a.path for a in client.list_artifacts(run_id, "samples")} >= {"samples/samples.npz", "samples/samples.png"}

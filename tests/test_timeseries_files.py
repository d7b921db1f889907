"""Your own series (data.source: files): CSV/CSV.gz/TSV/Parquet in the wide and long layouts, time
parsing and sorting, duplicated timestamps and gaps with data.missing, bad records in rejects.csv
with counts, one-line errors, labels for the conditional model, `vaeflow anomaly` on the long
layout, and the wide example through prepare → train (Ray) → sample → evaluate."""

from __future__ import annotations

import csv
import gzip
import json

import numpy as np
import pandas as pd
import pytest
import torch

from vaeflow import cli, stages
from vaeflow import config as cfg
from vaeflow.modalities.timeseries.data import TimeSeriesData
from vaeflow.models.vae import build_model
from tests.conftest import ROOT

TS_TINY = ROOT / "configs/timeseries/tiny.yaml"
EXAMPLES = ROOT / "examples/timeseries"


CONV = {"latent_dim": 4, "encoder": {"name": "conv1d", "channels": [16, 16]},
        "decoder": {"name": "conv1d", "channels": [16, 16]}}


def _config(tmp, path, *overrides, preset=TS_TINY, model=None):
    data = cfg.read_yaml(preset) | ({"model": model} if model else {})
    return cfg.resolve(data, overrides=[
        f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"tracking.artifact_location={tmp}/mlartifacts",
        f"train.storage_path={tmp}/ray_results", "data.source=files", f"data.path={path}",
        # The tiny preset takes Stocks' log-returns; these files test reading, and hold zeros and negatives.
        "data.transform=none", *overrides])


def _prepare(tmp, path, *overrides):
    paths = stages.Paths.for_modality("timeseries", tmp / "project")
    counts = stages.prepare(_config(tmp, path, *overrides), paths, progress=False)
    with open(paths.processed / "rejects.csv", newline="") as f:
        rejects = list(csv.DictReader(f))
    return counts, rejects, paths


def _load(paths, split):
    with np.load(paths.processed / f"{split}.npz") as f:
        return f["x"], f["y"]


def _write(frame, path):
    name = path.name
    if name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    elif name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            frame.to_csv(f, index=False, sep="\t" if ".tsv" in name else ",")
    else:
        frame.to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",")
    return path


def _wide(n=100, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"date": pd.date_range("2021-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
                         "a": rng.normal(size=n).round(4), "b": (np.arange(n) * 0.5).round(4)})


# --- formats and layouts -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["s.csv", "s.csv.gz", "s.tsv", "s.tsv.gz", "s.parquet"])
def test_each_format_reads_the_wide_layout(tmp_path, name):
    frame = _wide()
    if name.endswith(".parquet"):  # Parquet keeps real types: a datetime column and float channels
        frame = frame.assign(date=pd.to_datetime(frame["date"]))
    path = _write(frame, tmp_path / name)
    counts, rejects, paths = _prepare(tmp_path, path, "data.time_column=date", "data.window=8", "data.stride=2")
    assert counts["rows_read"] == 100 and counts["series_read"] == 1 and counts["bad_records"] == 0 and not rejects
    assert counts["gap_steps"] == 0 and counts["sampling_interval"] == "1 days 00:00:00"
    spec = json.loads((paths.processed / "spec.json").read_text())
    assert spec["channel_names"] == ["a", "b"] and spec["source"]["layout"] == "wide"
    train = frame.iloc[:70]  # 100 days: the last 15 + 15 are validation and test, in time order
    np.testing.assert_allclose(spec["scaler"]["offset"], [train["a"].min(), train["b"].min()])
    x, _ = _load(paths, "train")
    assert x.shape == ((70 - 8) // 2 + 1, 8, 2)
    np.testing.assert_allclose(x[1, :, 1] * spec["scaler"]["scale"][1] + spec["scaler"]["offset"][1],
                               frame["b"].to_numpy()[2:10], rtol=1e-5)  # window 1 starts at step 2, in date order


def _long(n_series=6, steps=40, seed=0):
    """Series i: value t + 100 i (a: rising in time), labels 'up' for even, 'down' for odd series."""
    rng = np.random.default_rng(seed)
    parts = [pd.DataFrame({"id": f"s{i}", "t": np.arange(steps), "a": np.arange(steps) + 100.0 * i,
                           "b": rng.normal(size=steps).round(3), "kind": "up" if i % 2 == 0 else "down"})
             for i in range(n_series)]
    return pd.concat(parts, ignore_index=True)


LONG = ("data.layout=long", "data.series_column=id", "data.time_column=t", "data.label_column=kind",
        "data.window=8", "data.stride=4")


@pytest.mark.parametrize("name", ["l.csv", "l.parquet"])
def test_long_layout_several_series_sorted_with_labels(tmp_path, name):
    frame = _long()
    shuffled = frame.sample(frac=1.0, random_state=0)  # rows of every series out of time order
    path = _write(shuffled, tmp_path / name)
    counts, rejects, paths = _prepare(tmp_path, path, *LONG, "data.split=series", "data.val_fraction=0.2",
                                      "data.test_fraction=0.2", "data.scaling=standard")
    t = shuffled.groupby("id", sort=False)["t"]
    expected_unsorted = int(sum((g.to_numpy()[1:] < np.maximum.accumulate(g.to_numpy())[:-1]).sum() for _, g in t))
    assert counts["unsorted_rows"] == expected_unsorted > 0 and counts["series_read"] == 6 and not rejects
    spec = json.loads((paths.processed / "spec.json").read_text())
    assert spec["class_names"] == ["up", "down"] and spec["num_classes"] == 2
    offset, scale = spec["scaler"]["offset"][0], spec["scaler"]["scale"][0]
    seen = {}
    for split in ("train", "val", "test"):
        x, y = _load(paths, split)
        a = x[:, :, 0] * scale + offset  # back to t + 100 i
        assert np.allclose(np.diff(a, axis=1), 1.0, atol=1e-3)  # sorted by time within each window
        series = np.round(a[:, 0] // 100).astype(int)
        assert (y == series % 2).all()  # each window keeps its series' label
        seen[split] = set(series)
    assert sum(map(len, seen.values())) == 6 and not (seen["train"] & (seen["val"] | seen["test"]))  # whole series
    assert len(seen["val"]) == len(seen["test"]) == 1


def test_long_layout_split_time_cuts_each_series(tmp_path):
    counts, _, paths = _prepare(tmp_path, _write(_long(n_series=3, steps=100), tmp_path / "l.csv"), *LONG)
    x, _ = _load(paths, "train")
    spec = json.loads((paths.processed / "spec.json").read_text())
    a = x[:, :, 0] * spec["scaler"]["scale"][0] + spec["scaler"]["offset"][0]
    assert (a % 100 < 70).all() and len(x) == 3 * ((70 - 8) // 4 + 1)  # only each series' first 70 steps
    x, _ = _load(paths, "test")
    assert len(x) == 3 * ((15 - 8) // 4 + 1)


# --- time handling, gaps and data.missing ---------------------------------------------------------


def _gappy(tmp_path):
    """30 daily rows with two gaps (3 days missing), two duplicated dates and two rows out of order."""
    dates = list(pd.date_range("2021-01-01", periods=33, freq="D").strftime("%Y-%m-%d"))
    del dates[20:22], dates[10]  # gaps: 1 day, then 2 days
    rows = [[d, float(i), float(i % 3)] for i, d in enumerate(dates)]
    rows += [[dates[5], 99.0, 0.0], [dates[7], 98.0, 1.0]]  # duplicates (later lines: kept out)
    rows[3], rows[4] = rows[4], rows[3]  # one pair swapped
    path = tmp_path / "gappy.csv"
    pd.DataFrame(rows, columns=["date", "x", "y"]).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("missing", ["impute", "drop"])
def test_duplicates_unsorted_and_gaps_per_missing_policy(tmp_path, missing):
    counts, rejects, paths = _prepare(tmp_path, _gappy(tmp_path), "data.time_column=date", "data.window=4",
                                      "data.stride=1", f"data.missing={missing}", "data.val_fraction=0.2",
                                      "data.test_fraction=0.2")
    # Unsorted: rows earlier than a row above them (the swapped one and the two late duplicates).
    assert counts["rows_read"] == 32 and counts["duplicate_times"] == 2 and counts["unsorted_rows"] == 3
    assert counts["gaps"] == 2 and counts["gap_steps"] == 3 and counts["irregular_steps"] == 0
    assert sorted(int(r["line"]) for r in rejects) == [32, 33]  # the duplicates, named by their file lines
    assert all("duplicate timestamp" in r["reason"] for r in rejects)
    steps = 30 + (3 if missing == "impute" else 0)
    assert counts["gap_steps_imputed"] == (3 if missing == "impute" else 0)
    assert counts["imputed_values"] == (6 if missing == "impute" else 0)  # 3 steps × 2 channels
    n_test = n_val = round(steps * 0.2)
    assert counts["n_test"] == n_test - 3 and counts["n_train"] == steps - 2 * n_val - 3


def test_gaps_rejected_and_frequency_sets_the_grid(tmp_path, capsys):
    path = _gappy(tmp_path)
    args = ["prepare", "--modality", "timeseries", "--preset", str(TS_TINY), "--root", str(tmp_path / "p"),
            "--set", "data.source=files", "--set", f"data.path={path}", "--set", "data.time_column=date"]
    assert cli.main([*args, "--set", "data.missing=reject"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 32: duplicate timestamp" in err  # reject: the first problem stops it
    assert not (tmp_path / "p/data/processed").exists()  # nothing half-written
    # Weekly data read with a daily grid: every row is a gap's end; the right frequency has none.
    weekly = pd.DataFrame({"date": pd.date_range("2021-01-04", periods=60, freq="W-MON"), "v": np.arange(60.0)})
    for freq, gap_steps in (("D", 59 * 6), ("W-MON", 0)):
        counts, _, _ = _prepare(tmp_path, _write(weekly, tmp_path / "w.parquet"), "data.time_column=date",
                                f"data.frequency={freq}", "data.missing=drop", "data.window=4")
        assert counts["gap_steps"] == gap_steps


def test_numeric_time_and_irregular_steps(tmp_path):
    t = np.r_[np.arange(0, 50, 0.5), 50.2, np.arange(51, 60, 0.5)]  # step 0.5, one point off the grid
    path = _write(pd.DataFrame({"time": t, "v": np.sin(t)}), tmp_path / "n.csv")
    counts, _, _ = _prepare(tmp_path, path, "data.time_column=time", "data.window=4")
    assert counts["sampling_interval"] == 0.5 and counts["irregular_steps"] == 1  # 50.2
    assert counts["gaps"] == 1 and counts["gap_steps"] == 2  # 50.0 and 50.5


# --- bad records ----------------------------------------------------------------------------------


BAD = {  # name: (text, counts key, reason fragment, lines kept out or replaced)
    "ragged": ("date,a\n2021-01-01,1\n2021-01-02,2,3\n", "ragged_rows", "ragged row", [3]),
    "non_numeric": ("date,a\n2021-01-01,1\n2021-01-02,abc\n", "non_numeric_values", "'abc' in column 'a'", [3]),
    "unparsable_time": ("date,a\n2021-01-01,1\nyesterday,2\n", "unparsable_times", "is not a date/time", [3]),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_records_are_listed_and_counted(tmp_path, kind, capsys):
    head, key, reason, lines = BAD[kind]
    good = "".join(f"2021-02-{d:02d},{d}\n" for d in range(1, 28))
    path = tmp_path / "bad.csv"
    path.write_text(head + good)
    counts, rejects, paths = _prepare(tmp_path, path, "data.time_column=date", "data.window=4", "data.missing=drop")
    assert counts[key] == 1 and [int(r["line"]) for r in rejects] == lines and reason in rejects[0]["reason"]
    assert counts["bad_records"] == (0 if kind == "non_numeric" else 1)  # a non-number is a missing value
    if kind == "non_numeric":
        assert rejects[0]["action"] == "step dropped" and counts["dropped_steps"] == 1
    rc = cli.main(["prepare", "--modality", "timeseries", "--preset", str(TS_TINY), "--root", str(tmp_path / "r"),
                   "--set", "data.source=files", "--set", f"data.path={path}", "--set", "data.time_column=date",
                   "--set", "data.missing=reject"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"line {lines[0]}" in err and str(path) in err


def test_long_layout_bad_records(tmp_path):
    frame = _long(n_series=4, steps=30)
    frame.loc[frame.index[frame["id"] == "s1"][:3], "kind"] = "down?"  # s1: two labels → the whole series out
    frame.loc[5, "id"] = " "  # an empty id
    path = _write(frame, tmp_path / "l.csv")
    counts, rejects, paths = _prepare(tmp_path, path, *LONG, "data.split=series", "data.val_fraction=0.34",
                                      "data.test_fraction=0.34")
    assert counts["series_label_conflicts"] == 1 and counts["empty_series_ids"] == 1 and counts["series_read"] == 3
    assert counts["bad_records"] == 30 + 1 == len(rejects)
    assert {int(r["line"]) for r in rejects if "labels" in r["reason"]} == set(range(32, 62))  # s1's lines
    assert [int(r["line"]) for r in rejects if "empty series id" in r["reason"]] == [7]


@pytest.mark.parametrize("content, name, extra, message", [
    (None, "missing.csv", [], "no such file"),
    (b"", "empty.csv", [], "Empty CSV file"),
    (b"date,a\n", "header_only.csv", [], "no usable rows"),
    (b"a\n1\n", "table.xlsx", [], "unknown table format"),
    (b"date,a\n2021-01-01,1\n", "t.csv", ["data.time_column=when"], "no column 'when'"),
    (b"garbage", "t.parquet", [], "cannot read it as PARQUET"),
    (b"id,a\nx,1\n", "t.csv", ["data.layout=long"], "data.series_column is not set"),
])
def test_unreadable_files_stop_prepare_in_one_line(tmp_path, capsys, content, name, extra, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    sets = [f"data.path={path}", "data.source=files", "data.time_column=date", *extra]
    rc = cli.main(["prepare", "--modality", "timeseries", "--preset", str(TS_TINY), "--root", str(tmp_path),
                   *[a for s in sets for a in ("--set", s)]])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "data/processed").exists()


# --- labels → the conditional model; vaeflow anomaly on the long layout ----------------------------


def test_labels_feed_the_conditional_model(tmp_path):
    counts, _, paths = _prepare(tmp_path, _write(_long(), tmp_path / "l.csv"), *LONG, "data.split=series")
    data = TimeSeriesData()
    spec = data.input_spec(paths.processed)
    config = _config(tmp_path, "x", *LONG, model=CONV | {"conditional": True})
    model = build_model(config.model, spec)
    assert model.num_classes == 2
    train = data.load(paths.processed, "train")
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=len(train))))
    inputs = data.model_inputs(batch, config.data, train=True, generator=None)
    assert torch.equal(inputs.labels, train.y) and set(train.y.tolist()) == {0, 1}
    x = inputs.x[:1].expand(2, -1, -1)  # one window, encoded under each label
    with torch.no_grad():
        posterior = model.encode(x, torch.tensor([0, 1]))
    assert not torch.allclose(posterior.mu[0], posterior.mu[1])  # the label reaches the encoder
    with pytest.raises(ValueError, match="conditional"):
        model.encode(x, None)


def _trained_long_model(tmp_path):
    """A tiny conv1d VAE fitted in-process (the trainer's epoch loop, no Ray) on a prepared long file."""
    from torch.utils.data import DataLoader

    from vaeflow.training import checkpoint
    from vaeflow.training.loop import run_epoch

    steps = np.arange(60)
    parts = [pd.DataFrame({"id": f"s{i}", "t": steps, "a": np.sin(steps / 3 + i).round(4),
                           "b": np.cos(steps / 3 + i).round(4)}) for i in range(12)]
    path = _write(pd.concat(parts, ignore_index=True), tmp_path / "train_long.csv")
    long = ("data.layout=long", "data.series_column=id", "data.time_column=t", "data.window=12", "data.stride=2",
            "evaluate.anomaly_k=4")
    config = _config(tmp_path, path, *long, model=CONV)
    paths = stages.Paths.for_modality("timeseries", tmp_path / "project")
    stages.prepare(config, paths, progress=False)
    data = TimeSeriesData()
    spec = data.input_spec(paths.processed)
    torch.manual_seed(0)
    model = build_model(config.model, spec)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(data.load(paths.processed, "train"), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    for epoch in range(25):
        run_epoch(model, loader, data, config, epoch=epoch, device=torch.device("cpu"),
                  generator=torch.Generator().manual_seed(epoch), optimizer=opt)
    model_file = tmp_path / "model.pt"
    checkpoint.save(model_file, model=model.state_dict(), config=config.to_dict(), input_spec=spec, epoch=1,
                    mlflow_run_id="")
    return model_file


def test_anomaly_command_reads_the_long_layout(tmp_path, capsys):
    model_file = _trained_long_model(tmp_path)
    steps = np.arange(40)
    parts = [pd.DataFrame({"id": f"new{i}", "t": steps, "b": np.cos(steps / 3 + i), "a": np.sin(steps / 3 + i)})
             for i in range(4)]
    parts[2].loc[20:23, "a"] += 3.0  # a burst in one series
    score_in = _write(pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=1), tmp_path / "new.tsv")
    assert cli.main(["anomaly", str(score_in), "--model", str(model_file), "--k", "4", "--stride", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["series"] == 4 and result["windows"] == 4 * ((40 - 12) // 2 + 1)
    assert result["most_anomalous_series"] == "new2" and 9 <= result["most_anomalous_start_step"] <= 23
    scores = pd.read_csv(tmp_path / "new.tsv.scores.csv")
    assert list(scores.columns[:4]) == ["series", "window", "start_step", "end_step"]
    per_series = scores.groupby("series")["neg_elbo_score"].max()
    assert per_series.idxmax() == "new2" and per_series["new2"] > 2 * per_series.drop("new2").max()
    # The same file as wide columns of one series fails in one line: no such series column.
    wide = _write(parts[0][["t", "a", "b"]], tmp_path / "one.csv")
    assert cli.main(["anomaly", str(wide), "--model", str(model_file), "--k", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no column 'id'" in err
    assert cli.main(["anomaly", str(wide), "--model", str(model_file), "--k", "2", "--layout", "wide"]) == 0
    assert json.loads(capsys.readouterr().out)["series"] == 1


# --- the wide example through the product ---------------------------------------------------------


# About 30 s (a Ray fit): -m slow; the default suite trains on your own molecules end to end, and the
# slow DVC test runs the long-layout example through every stage.
@pytest.mark.slow
def test_wide_example_pipeline_ray_mlflow(tmp_path, ray_cluster):
    preset = ROOT / "configs/timeseries/files-wide.yaml"
    config = _config(tmp_path, EXAMPLES / "goog_daily.csv", "train.epochs=1", "evaluate.iwae_k=5",
                     "evaluate.iwae_examples=32", "evaluate.posthoc_steps=10", "evaluate.posthoc_seeds=1",
                     "sample.n=8", "data.stride=4", "model.encoder={name: gru, hidden: 8}",
                     "model.decoder={name: timevae, trend_degree: 2, seasons: [], residual_channels: [8]}",
                     preset=preset)
    paths = stages.Paths.for_modality("timeseries", tmp_path)
    prepared = stages.prepare(config, paths, progress=False)
    assert prepared["rows_read"] == 1047 and prepared["gap_steps_imputed"] == prepared["gap_steps"] > 0
    assert json.loads((paths.metrics / "prepare.json").read_text()) == json.loads(json.dumps(prepared))
    assert stages.train(config, paths, progress=False)["epochs"] == 1
    stages.sample(config, paths)
    with np.load(paths.samples / "samples.npz") as f:
        assert f["samples"].shape == (8, 24, 6)
    ev = stages.evaluate(config, paths, progress=False)
    assert np.isfinite(ev["test_neg_elbo"]) and np.isfinite(ev["test_nll_iwae"])
    assert np.isfinite(ev["discriminative_score_train"]) and np.isfinite(ev["predictive_score_train"])

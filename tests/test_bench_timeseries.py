"""Smoke tests of bench/timeseries_anomaly.py (the UCR one-class protocol) and bench/timeseries_families.py at tiny sizes."""

from __future__ import annotations

import json
import math

import pytest

from bench import timeseries_anomaly


def test_anomaly_protocol_scores_every_normal_class(tmp_path):
    out = tmp_path / "anomaly.json"
    timeseries_anomaly.main(["--dataset", "ucr-gunpoint", "--epochs", "2", "--seeds", "1", "--out", str(out)])
    record = json.loads(out.read_text())
    rows = {row["score"]: row for row in record["rows"]}
    assert set(rows) == {"recon_prob", "neg_elbo", "1nn_distance"}
    assert {run["normal_class"] for run in record["runs"]} == {"1", "2"}  # GunPoint's two classes, each normal once
    for row in rows.values():
        assert 0.0 <= row["auroc_mean"] <= 1.0 and 0.0 < row["best_f1_mean"] <= 1.0 and math.isfinite(row["auroc_std"])
    # The model-free 1-NN baseline separates GunPoint's classes well above chance: the scoring is wired right.
    assert rows["1nn_distance"]["auroc_mean"] > 0.7


@pytest.mark.slow  # 63 s on 2 shared cores (3 pipelines with Ray + MLflow, 3 tiny GunPoint runs)
def test_families_table_has_every_dataset_and_model(tmp_path):
    from bench import timeseries_families

    out = tmp_path / "families.json"
    timeseries_families.main(["--datasets", "stocks", "--epochs", "1", "--posthoc-steps", "20", "--seeds", "1",
                              "--gunpoint-epochs", "2", "--gunpoint-seeds", "1", "--workdir", str(tmp_path / "work"),
                              "--set", "train.num_workers=1", "--set", "data.stride=4", "--set", "evaluate.iwae_k=10",
                              "--set", "evaluate.iwae_examples=64", "--set", "sample.n=16", "--out", str(out)])
    record = json.loads(out.read_text())
    rows = {(row["dataset"], row["model"]): row for row in record["rows"]}
    assert set(rows) == {("stocks", m) for m in ("gru-vae", "timevae", "vrnn")}
    for row in rows.values():
        assert 0.0 <= row["disc"] <= 0.5 and row["pred"] >= 0.0 and row["acf_dist"] >= 0.0 and row["epoch_s"] > 0.0
        assert math.isfinite(row["test_nll_iwae"]) and math.isfinite(row["disc_std"]) and math.isfinite(row["pred_std"])
        assert 0.0 <= row["gunpoint_auroc"] <= 1.0 and 0.0 < row["gunpoint_best_f1"] <= 1.0
    assert rows["stocks", "vrnn"]["family"] == "vrnn" and 0.0 <= rows["stocks", "vrnn"]["disc_10x"] <= 0.5
    assert record["anchors"]["stocks"][0]["discriminative"] == 0.067  # Diffusion-TS, next to the rows
    assert record["protocol"][:2] == ["data.split=shuffled", "data.transform=none"]

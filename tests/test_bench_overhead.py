"""Smoke test of bench/overhead.py: tiny sizes, so the script keeps working (figures are meaningless)."""

from __future__ import annotations

import json
import math

import pytest

from bench import overhead


# About 50 s (Ray Train fits at tiny sizes, side by side with a bare loop): -m slow.
@pytest.mark.slow
def test_overhead_bench_runs_and_writes_its_table(ray_cluster, tmp_path):
    out = tmp_path / "overhead.json"
    overhead.main(["--modality", "image", "--preset", "tiny", "--epochs", "2", "--train-limit", "256",
                   "--repeats", "1", "--no-scaling", "--out", str(out)])
    record = json.loads(out.read_text())
    (row,) = record["rows"]
    assert row["modality"] == "image" and row["comparison"].startswith("overhead")
    for key in ("bare_train_s", "ray_train_s", "train_ratio", "bare_epoch_s", "ray_epoch_s", "epoch_ratio"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    # The ratios are those of the measured times, and the bare and Ray runs both ran.
    assert row["train_ratio"] == pytest.approx(row["ray_train_s"] / row["bare_train_s"])
    assert row["epoch_ratio"] == pytest.approx(row["ray_epoch_s"] / row["bare_epoch_s"])
    assert row["startup_extra_s"] == pytest.approx(row["ray_startup_s"] - row["bare_startup_s"])
    assert row["bare_train_s"] != row["ray_train_s"]
    assert record["machine"]["torch"] and record["settings"]["epochs"] == 2


def test_epoch_cost_bench_times_every_variant(tmp_path):
    from bench import epoch_cost

    out = tmp_path / "epoch_cost.json"
    epoch_cost.main(["--preset", "configs/image/tiny.yaml", "--train-limit", "256", "--batch-size", "64",
                     "--repeats", "2", "--out", str(out)])
    record = json.loads(out.read_text())
    rows = {row["variant"]: row for row in record["rows"]}
    assert list(rows) == list(epoch_cost.VARIANTS) and record["steps"] == 4
    for row in rows.values():
        assert math.isfinite(row["ms_per_step"]) and row["ms_per_step"] > 0, row
    # Each variant's figures are the medians of its measured repeats (two here: their mean).
    runs = record["runs_s_per_step"]
    for name, row in rows.items():
        assert row["ms_per_step"] == pytest.approx(1e3 * (runs[0][name] + runs[1][name]) / 2)
        assert row["vs_minimal"] == pytest.approx((runs[0][name] / runs[0]["minimal"] + runs[1][name] / runs[1]["minimal"]) / 2)
    assert rows["minimal"]["vs_minimal"] == pytest.approx(1.0)
    assert [set(run) for run in record["runs_s_per_step"]] == [set(epoch_cost.VARIANTS)] * 2  # every variant, every repeat
    assert rows["loader"]["ms_per_step"] < rows["minimal"]["ms_per_step"]  # a training step also loads its batch

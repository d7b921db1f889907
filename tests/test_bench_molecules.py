"""Smoke tests of the molecule benchmarks (bench/featurise.py, bench/sampling.py,
bench/molecule_collapse.py, bench/fcd_memory.py) at tiny sizes:
each runs end to end in-process and writes a JSON record with the expected keys and sane rates."""

from __future__ import annotations

import json
import math

import pytest

from bench import fcd_memory, featurise, molecule_collapse, sampling
from tests.conftest import ROOT


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_featurise_benchmark_writes_rates(tmp_path):
    out = tmp_path / "featurise.json"
    featurise.main(["--n", "200", "--scaling-n", "200", "--repeats", "1", "--profile-n", "50", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["benchmark"] == "featurise" and record["n"] == 200 and record["n_pool"] == 200
    for key in ("parse_per_s", "floor_per_s", "floor_ratio", "graph_per_s", "graph_ratio", "featurise_per_s", "ratio", "ratio_cpu"):
        assert _positive(record[key]), key
    assert record["meets_goal"] == (record["graph_ratio"] >= record["goal_ratio"])
    assert record["featurise_per_s"] < record["graph_per_s"] < record["parse_per_s"]  # each does more than the last
    assert [s["processes"] for s in record["scaling"]][0] == 1
    for row in record["scaling"]:
        for key in ("per_s", "per_core_per_s", "per_cpu_s", "cores_used", "vs_in_process", "speedup", "efficiency"):
            assert _positive(row[key]), (row["processes"], key)
        # The derived figures come from the measured rate, not from constants.
        assert row["per_core_per_s"] == pytest.approx(row["per_s"] / row["processes"])
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["processes"])
    assert record["scaling"][0]["speedup"] == pytest.approx(1.0)  # the 1-process pool against itself
    shares = [row["share"] for row in record["profile"] if not row["function"].startswith(" ")]
    assert record["profile"] and 0.5 < sum(shares) <= 1.01  # featurise's own time + its direct callees
    assert record["full_moses"] is None
    assert record["machine"]["host_cpus"] >= 1


def test_sampling_benchmark_writes_rates(tmp_path):
    out = tmp_path / "sampling.json"
    sampling.main(["--preset", str(ROOT / "configs/molecule/tiny.yaml"), "--train-n", "128", "--batch", "32",
                   "--ts-presets", str(ROOT / "configs/timeseries/quick.yaml"), "--ts-batch", "32",
                   "--repeats", "1", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["benchmark"] == "sampling" and record["threads"] >= 1
    molecule = record["molecule"]
    assert molecule["model"].startswith("trained here") and molecule["train_metrics"]["n_train"] > 0
    for key in ("valid_per_s", "valid_per_cpu_s", "sampled_per_s", "cores_used", "mean_tokens"):
        assert _positive(molecule[key]), key
    assert 0 < molecule["valid_fraction"] <= 1  # SELFIES: nearly every sample is a valid molecule
    assert math.isclose(sum(molecule["stage_share"].values()), 1.0)
    (ts,) = record["timeseries"].values()
    assert ts["decoder"] == "timevae" and ts["batch"] == 32
    for key in ("sequences_per_s", "sequences_per_cpu_s", "cores_used"):
        assert _positive(ts[key]), key


# 28 s and 12 s (the next test) under load: -m slow, keeping the default suite within 10 minutes.
@pytest.mark.slow
def test_collapse_benchmark_reports_every_variant_and_epoch(tmp_path, mol_data):
    root, _ = mol_data  # the tiny preset's prepared MOSES subset
    out = tmp_path / "collapse.json"
    molecule_collapse.main(["--preset", str(ROOT / "configs/molecule/tiny.yaml"), "--root", str(root), "--epochs", "2",
                            "--recon", "16", "--samples", "32", "--variant", "plain=loss.warmup_epochs=0",
                            "--variant", "low_beta=loss.beta=0.05,loss.warmup_epochs=0", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["variants"] == {"plain": ["loss.warmup_epochs=0"], "low_beta": ["loss.beta=0.05", "loss.warmup_epochs=0"]}
    assert [(r["variant"], r["epoch"]) for r in record["rows"]] == [("plain", 1), ("plain", 2), ("low_beta", 1), ("low_beta", 2)]
    for row in record["rows"]:
        for key in ("val_neg_elbo", "val_kl", "FCD_Test", "train_s"):
            assert _positive(row[key]), key
        assert 0 <= row["active_units"] <= 8 and 0 <= row["recon_acc"] <= 1 and 0 < row["unique"] <= 1
        assert 0 <= row["recon_tanimoto_shuffled"] <= 1 and 0 <= row["recon_tanimoto"] <= 1
    assert [r["beta"] for r in record["rows"]] == [1.0, 1.0, 0.05, 0.05]  # each variant trains at its own β


@pytest.mark.slow
def test_fcd_memory_benchmark_compares_both_implementations(tmp_path):
    out = tmp_path / "fcd_memory.json"
    fcd_memory.main(["--sizes", "24", "--out", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    # The same statistics either way, to fcd_torch's float32 mean (vaeflow sums in float64).
    assert row["molecules"] == 24 and row["max_abs_diff"] < 1e-6
    for key in ("fcd_torch_peak_mb", "vaeflow_peak_mb", "peak_ratio", "fcd_torch_s", "vaeflow_s"):
        assert _positive(row[key]), key

"""Smoke test of bench/ray_footprint.py at tiny sizes: the script runs, and the lean private cluster
really is leaner than Ray's full one (fewer processes, less memory, none of the helper actors it
leaves out). Timings at these sizes are meaningless and not checked."""

from __future__ import annotations

import json

import pytest

from bench import ray_footprint


# About 2 min (two private Ray clusters and a bare loop, each in a fresh process): -m slow.
@pytest.mark.slow
def test_ray_footprint_bench_measures_bare_lean_and_full(tmp_path):
    out = tmp_path / "ray_footprint.json"
    ray_footprint.main(["--preset", "tiny", "--epochs", "2", "--train-limit", "512", "--repeats", "1",
                        "--out", str(out)])
    record = json.loads(out.read_text())
    rows = {row["trainer"]: row for row in record["rows"]}
    assert list(rows) == ["bare", "lean", "full"]
    assert rows["bare"]["processes"] == 1 and rows["bare"]["vs_bare"] == 1
    assert rows["lean"]["processes"] < rows["full"]["processes"]
    assert rows["bare"]["peak_pss_mb"] < rows["lean"]["peak_pss_mb"] < rows["full"]["peak_pss_mb"]
    runs = {run["variant"]: run for run in record["runs"]}
    roles = {v: {p["process"] for p in runs[v]["processes"]} for v in ("lean", "full")}
    left_out = {"ray::PlacementGroupCleaner", "ray::DatasetManager", "ray::_AutoscalingCoordinatorActor"}
    assert left_out <= roles["full"] and not left_out & roles["lean"]
    assert "ray::RayTrainWorker" in roles["lean"] and "ray::TrainController" in roles["lean"]
    for v in ("lean", "full"):
        assert len(runs[v]["train_s"]) == 2 and runs[v]["ray_init_s"] > 0


# About 90 s (a bare loop, then a `ray start` head with two jobs on it): -m slow.
@pytest.mark.slow
def test_ray_footprint_bench_runs_jobs_on_a_head_that_outlives_them(tmp_path):
    out = tmp_path / "ray_footprint.json"
    ray_footprint.main(["--preset", "tiny", "--epochs", "2", "--train-limit", "512", "--repeats", "1",
                        "--variants", "bare", "attached", "--jobs-per-cluster", "2", "--out", str(out)])
    record = json.loads(out.read_text())
    assert [row["trainer"] for row in record["rows"]] == ["bare", "attached"]
    run = next(r for r in record["runs"] if r["variant"] == "attached")
    assert len(run["jobs"]) == 2 and run["head_start_s"] > 0
    assert run["jobs"][0]["pid"] != run["jobs"][1]["pid"]  # each job its own driver process
    assert run["jobs"][1]["ray_init_s"] < run["head_start_s"]  # joining, not starting, a cluster
    roles = {p["process"] for p in run["processes"]}
    assert {"ray start --head (the head)", "driver (job 1)", "driver (job 2)", "ray::RayTrainWorker"} <= roles
    assert run["outside_train_s"] == pytest.approx(run["jobs"][1]["wall_s"] - sum(run["jobs"][1]["train_s"]))

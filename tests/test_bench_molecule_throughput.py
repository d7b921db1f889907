"""Smoke test of bench/molecule_throughput.py at tiny sizes, without Ray (figures are meaningless)."""

from __future__ import annotations

import json
import math

import pytest

from bench import molecule_throughput


# About 25 s (bare training loops at tiny sizes): -m slow, keeping the default suite within its budget.
@pytest.mark.slow
def test_molecule_throughput_bench_times_and_scores_every_variant(tmp_path):
    out = tmp_path / "molecule_throughput.json"
    molecule_throughput.main(["--train-limit", "300", "--val-size", "64", "--epochs", "2", "--seeds", "1",
                              "--buckets", "1", "--profile-steps", "2", "--threads", "1", "--no-ray", "--out", str(out)])
    record = json.loads(out.read_text())
    rows = {row["variant"]: row for row in record["rows"]}
    assert list(rows) == ["today", "trimmed", "bucketed", "bf16"]
    for row in rows.values():
        assert math.isfinite(row["molecules_per_s"]) and row["molecules_per_s"] > 0, row
    assert rows["today"]["vs_today"] == pytest.approx(1.0)
    # Today's batches compute the split's full width; cut and bucketed ones compute less.
    tokens = record["tokens"]
    assert tokens["today"]["mean_batch_width"] == record["data"]["split_width"]
    assert tokens["bucketed"]["tokens_computed_per_real"] <= tokens["trimmed"]["tokens_computed_per_real"] < tokens["today"]["tokens_computed_per_real"]
    assert record["gru_packing"]["packed_ms"] > 0
    for p in record["profile"]:
        assert p["decoder_fwd_bwd_ms"] > 0 and p["encoder_fwd_bwd_ms"] > 0 and p["top_ops"]
    assert len(record["quality"]["bare_today"]) == len(record["quality"]["bare_bucketed"]) == 1
    assert len(record["quality"]["bare_bf16"]) == 1 and math.isfinite(record["quality"]["bare_mean_difference_bf16"])
    assert tokens["bf16"] == tokens["trimmed"]  # the same batches, only the arithmetic differs

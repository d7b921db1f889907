"""Smoke test of bench/image_families.py at tiny sizes, so the script keeps working (figures are meaningless)."""

from __future__ import annotations

import json
import math

import pytest

from bench import image_families

TINY = ["--set", "data.val_size=256", "--set", "data.limit_train=768", "--set", "data.limit_test=256",
        "--set", "evaluate.iwae_k=10", "--set", "evaluate.iwae_examples=64", "--set", "evaluate.n_fd_samples=128",
        "--set", "evaluate.classifier.epochs=1"]


# 5.4 min measured while two other jobs ran (prepare, classifier, a VQ-VAE calibration and two families
# through Ray + MLflow): -m slow.
@pytest.mark.slow
def test_the_families_table_has_its_columns_and_references(tmp_path):
    out = tmp_path / "families.json"
    image_families.main(["--budget-minutes", "0.02", "--variants", "vqvae,vaegan", "--workdir", str(tmp_path / "work"),
                         "--no-figures", "--out", str(out), *TINY])
    record = json.loads(out.read_text())
    rows = {row["family"]: row for row in record["rows"]}
    assert set(rows) == {"vqvae", "vaegan"}
    for row in rows.values():
        assert row["fd"] > 0 and 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
        assert 0 < row["recon_mse"] < 1 and row["epochs"] >= 1 and row["s_per_epoch"] > 0
    # The VQ-VAE trained both phases (its prior gives bits/dim); the VAE-GAN has no NLL but logged val_fd.
    assert rows["vqvae"]["epochs"] == rows["vqvae"]["vq_epochs"] + 1 and math.isfinite(rows["vqvae"]["prior_bits_per_dim"])
    assert rows["vaegan"]["nll_nats"] is None and rows["vaegan"]["val_fd"] > 0
    floor, blurred = record["references"]
    assert floor["fd"] < blurred["fd"]  # the training set is closer to the test set than its blurred copy

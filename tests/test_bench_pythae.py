"""Smoke test of bench/pythae_compare.py: tiny sizes, real pythae and vaeflow trainers, one JSON record.

Each trainer runs in its own spawned process (the benchmark measures each process tree on its own),
so vaeflow's side starts its own private Ray cluster there instead of using the session's
``ray_cluster`` fixture.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("pythae")

from bench import pythae_compare  # noqa: E402
from vaeflow import config as cfg  # noqa: E402
from vaeflow.models.vae import build_model  # noqa: E402

from .conftest import TINY  # noqa: E402

SPEC = {"channels": 1, "height": 28, "width": 28, "num_classes": 10}


def test_pythae_wrappers_give_vaeflow_likelihood():
    """The pythae wrappers and the state-dict mapping score data exactly as the vaeflow model does."""
    config = cfg.load(TINY)
    torch.manual_seed(0)
    pmodel = pythae_compare.pythae_model(build_model(config.model, SPEC))
    torch.manual_seed(1)
    model = build_model(config.model, SPEC)  # other initial weights, replaced by pythae's below
    model.load_state_dict(pythae_compare.vaeflow_state_from_pythae(pmodel.state_dict()))
    x = torch.bernoulli(torch.rand(8, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    z = torch.randn(8, config.model.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        enc = pmodel.encoder(x)
        posterior = model.encode(x)
        recon_pythae, _, _ = pmodel.loss_function(pmodel.decoder(z).reconstruction, x, enc.embedding,
                                                  enc.log_covariance, z)
        log_px_z = model.decoder.log_prob(model.decode(z), x)
    torch.testing.assert_close(posterior.mu, enc.embedding)
    torch.testing.assert_close(-log_px_z.mean(), recon_pythae, rtol=1e-4, atol=1e-3)


@pytest.mark.timeout(300)
def test_pythae_compare_smoke(tmp_path):
    out = tmp_path / "pythae.json"
    record = pythae_compare.main(["--train-limit", "512", "--epochs", "1", "--k", "5", "--test-examples", "64",
                                  "--val-size", "512", "--repeats", "2", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "pythae"
    assert saved["results"] == json.loads(json.dumps(record["results"]))
    rows = {r["trainer"]: r for r in saved["results"]}
    assert set(rows) == {"pythae", "vaeflow"}
    for row in rows.values():
        for key in ("epoch_s_median", "train_s_total", "cpu_s_tree", "peak_rss_tree_mb", "peak_rss_worker_mb",
                    "test_neg_elbo", "test_nll_iwae", "test_nll_iwae_sem"):
            assert math.isfinite(row[key]) and row[key] >= 0, (row["trainer"], key, row[key])
        assert row["epochs"] == 1
    assert rows["vaeflow"]["peak_rss_worker_mb"] < rows["vaeflow"]["peak_rss_tree_mb"]
    assert set(saved["ratios_vaeflow_over_pythae"]) >= {"epoch_s_median", "peak_rss_tree_mb"}
    assert len(saved["ratios_per_round"]) == 2 and all(r["epoch_s_median"] > 0 for r in saved["ratios_per_round"])
    # Every round trains anew (a resumed vaeflow run would replay the first round's epoch times).
    times = [rd["vaeflow"] for rd in saved["rounds_epoch_times_s"]]
    assert len(times) == 2 and times[0] != times[1]
    assert math.isfinite(saved["paired_nll"]["nll_vaeflow_minus_pythae"])
    assert saved["settings"]["n_train"] == 512 and saved["differences"]

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


def test_read_pss_and_spread():
    """PSS of a live process is positive and at most its RSS; a gone process reads as None."""
    import os

    import psutil

    from bench._common import read_pss_kb

    pss = read_pss_kb(os.getpid())
    assert pss is not None and 0 < pss["Pss"] * 1024 <= psutil.Process().memory_info().rss
    assert read_pss_kb(2**22 + 12345) is None  # above pid_max: no such process
    s = pythae_compare.spread([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == 1.0 and math.isclose(s["sem"], 1 / 3**0.5)
    assert math.isnan(pythae_compare.spread([1.0])["sd"])


@pytest.mark.timeout(300)
def test_pythae_compare_smoke(tmp_path):
    out = tmp_path / "pythae.json"
    record = pythae_compare.main(["--train-limit", "512", "--epochs", "1", "--k", "5", "--test-examples", "64",
                                  "--val-size", "512", "--seeds", "0", "1", "--with-loop", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "pythae" and saved["complete"]
    assert saved["results"] == json.loads(json.dumps(record["results"]))
    assert [(r["seed"], r["trainer"]) for r in saved["results"]] == [(0, "pythae"), (0, "vaeflow"),
                                                                     (1, "pythae"), (1, "vaeflow")]
    for row in saved["results"]:
        for key in ("epoch_s_median", "train_s_total", "overhead_s", "overhead_process_s", "cpu_s_tree",
                    "peak_pss_tree_mb", "peak_rss_tree_mb", "peak_pss_worker_mb", "peak_rss_worker_mb",
                    "test_neg_elbo", "test_nll_iwae", "test_nll_iwae_sem"):
            assert math.isfinite(row[key]) and row[key] >= 0, (row["trainer"], key, row[key])
        assert row["epochs"] == 1
        assert row["peak_pss_tree_mb"] <= row["peak_rss_tree_mb"]  # PSS splits the shared pages
    for row in (r for r in saved["results"] if r["trainer"] == "vaeflow"):
        assert row["peak_pss_worker_mb"] < row["peak_pss_tree_mb"]
        assert row["peak_rss_worker_mb"] < row["peak_rss_tree_mb"]
    assert set(saved["ratios_vaeflow_over_pythae"]) >= {"epoch_s_median", "peak_pss_tree_mb", "peak_rss_tree_mb"}
    # One round per seed, the order alternating.
    rounds = saved["ratios_per_round"]
    assert [r["seed"] for r in rounds] == [0, 1] and [r["order"] for r in rounds] == [["pythae", "vaeflow", "loop"],
                                                                                   ["loop", "vaeflow", "pythae"]]
    # --with-loop: vaeflow / pythae per epoch = (the loop / pythae) × (on Ray / the loop), round by round.
    for r in rounds:
        assert math.isclose(r["epoch_loop_over_pythae"] * r["epoch_ray_over_loop"], r["epoch_s_median"], rel_tol=1e-9)
    assert all(math.isfinite(v) and v > 0 for v in saved["epoch_split_with_loop"].values())
    assert all(r["epoch_s_median"] > 0 and r["peak_pss_tree_mb"] > 0 for r in rounds)
    # Every round trains anew (a resumed vaeflow run would replay the first round's epoch times).
    times = [rd["vaeflow"] for rd in saved["rounds_epoch_times_s"]]
    assert len(times) == 2 and times[0] != times[1]
    assert [r["seed"] for r in saved["per_seed"]] == [0, 1]
    for row in saved["per_seed"]:
        assert math.isclose(row["neg_elbo_diff"], row["neg_elbo_vaeflow"] - row["neg_elbo_pythae"], rel_tol=1e-9)
    summary = saved["seed_summary"]
    assert summary["nll_diff"]["n"] == 2 and math.isfinite(summary["nll_diff"]["sd"])
    assert math.isclose(summary["nll_diff"]["mean"], sum(r["nll_diff"] for r in saved["per_seed"]) / 2, rel_tol=1e-6)
    assert math.isfinite(saved["paired_nll"]["nll_vaeflow_minus_pythae"])
    assert saved["settings"]["n_train"] == 512 and saved["settings"]["seeds"] == [0, 1] and saved["differences"]
    assert {k: len(v["vaeflow"]) for k, v in saved["per_image_nll"].items()} == {"0": 64, "1": 64}

    # The same record split by seed and combined again gives the same statistics over seeds.
    parts = []
    for i, seed in enumerate((0, 1)):
        part = dict(saved, per_seed=[saved["per_seed"][i]], results=saved["results"][2 * i:2 * i + 2],
                    ratios_per_round=[saved["ratios_per_round"][i]],
                    rounds_epoch_times_s=[saved["rounds_epoch_times_s"][i]],
                    per_image_nll={str(seed): saved["per_image_nll"][str(seed)]},
                    settings=saved["settings"] | {"seeds": [seed]})
        parts.append(tmp_path / f"seed{seed}.json")
        parts[-1].write_text(json.dumps(part))
    combined = pythae_compare.main(["--combine", *map(str, parts), "--out", str(tmp_path / "combined.json")])
    assert combined["settings"]["seeds"] == [0, 1] and combined["per_seed"] == saved["per_seed"]
    for key in ("nll_diff", "neg_elbo_diff"):
        assert combined["seed_summary"][key] == pytest.approx(saved["seed_summary"][key])
    assert combined["seed_summary"]["nll_diff_sem_images"] == pytest.approx(saved["seed_summary"]["nll_diff_sem_images"],
                                                                             rel=1e-4)
    with pytest.raises(SystemExit, match="more than one record"):
        pythae_compare.main(["--combine", str(parts[0]), str(parts[0]), "--out", str(tmp_path / "twice.json")])


def test_epoch_cost_times_pythaes_own_step_beside_vaeflows(tmp_path):
    from bench import epoch_cost

    out = tmp_path / "epoch_cost.json"
    epoch_cost.main(["--preset", "configs/image/tiny.yaml", "--train-limit", "256", "--batch-size", "64",
                     "--repeats", "2", "--pythae", "--out", str(out)])
    record = json.loads(out.read_text())
    assert [row["variant"] for row in record["rows"]] == [*epoch_cost.VARIANTS, "pythae"]
    assert all(math.isfinite(run["pythae"]) and run["pythae"] > 0 for run in record["runs_s_per_step"])

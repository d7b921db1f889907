"""FD and precision/recall for images: the formulas on constructed cases, then the classifier stage and
evaluate through the real stage code (docs/image.md, "Sample quality")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vaeflow.config import ConfigError
from vaeflow.modalities.image.metrics import Gaussian, frechet_distance, precision_recall, trace_sqrt_product
from vaeflow.modalities.image.quality import gaussian_blur


def _random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _analytic_fd(mu1, s1, mu2, s2) -> float:
    """||μ1−μ2||² + Tr(Σ1+Σ2−2(Σ1Σ2)^{1/2}), with the root from scipy on the exact covariances."""
    from scipy import linalg

    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(linalg.sqrtm(s1 @ s2))))


def test_fd_of_samples_from_two_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    d = 8
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    x1 = rng.multivariate_normal(mu1, s1, size=200_000)
    x2 = rng.multivariate_normal(mu2, s2, size=200_000)
    expected = _analytic_fd(mu1, s1, mu2, s2)
    # The exact statistics give the formula itself; sampled ones converge to it.
    assert frechet_distance(Gaussian(mu1, s1), Gaussian(mu2, s2)) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(Gaussian.fit(x1), Gaussian.fit(x2)) == pytest.approx(expected, rel=0.02)
    assert expected > 1  # the two Gaussians are far enough apart for the tolerance to mean something


def test_fd_of_identical_sets_is_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 16))
    g = Gaussian.fit(x)
    assert frechet_distance(g, g) == pytest.approx(0.0, abs=1e-8)
    # A mean shift by δ along one axis adds exactly δ².
    assert frechet_distance(Gaussian.fit(x + np.eye(16)[0] * 3.0), g) == pytest.approx(9.0, abs=1e-8)


def test_the_eigen_form_agrees_with_scipy_sqrtm_on_classifier_like_features():
    """Two implementations of Tr((Σ1Σ2)^{1/2}) on rank-deficient, non-negative (ReLU-like) features."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(24, 64))
    a = np.maximum(rng.normal(size=(3000, 24)) @ w, 0)  # (N, 64) of rank ≤ 24 before the ReLU
    b = np.maximum(rng.normal(0.3, 1.2, size=(3000, 24)) @ w, 0)
    ga, gb = Gaussian.fit(a), Gaussian.fit(b)
    eigen, sqrtm = (trace_sqrt_product(ga.sigma, gb.sigma, m) for m in ("eigen", "sqrtm"))
    assert eigen == pytest.approx(sqrtm, rel=1e-6)
    assert frechet_distance(ga, gb, "eigen") == pytest.approx(frechet_distance(ga, gb, "sqrtm"), rel=1e-6, abs=1e-6)
    with pytest.raises(ValueError, match="use 'eigen' or 'sqrtm'"):
        trace_sqrt_product(ga.sigma, gb.sigma, "svd")


def test_torchmetrics_fid_formula_agrees_where_installed():
    tm = pytest.importorskip("torchmetrics.image.fid")
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(500, 6)), rng.normal(0.5, 2.0, size=(500, 6))
    ga, gb = Gaussian.fit(a), Gaussian.fit(b)
    theirs = tm._compute_fid(*(torch.as_tensor(v) for v in (ga.mu, ga.sigma, gb.mu, gb.sigma)))
    assert frechet_distance(ga, gb) == pytest.approx(float(theirs), rel=1e-5)


def test_precision_and_recall_on_constructed_sets():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(600, 5))
    same = precision_recall(real, real.copy())
    assert (same.precision, same.recall) == (1.0, 1.0)
    far = precision_recall(real, real + 100.0)
    assert (far.precision, far.recall) == (0.0, 0.0)
    # Generated points covering one half of the real set: all plausible (precision 1), half the data missed.
    half = real[real[:, 0] > 0]
    sub = precision_recall(real, half)
    assert sub.precision == 1.0 and 0.3 < sub.recall < 0.8
    with pytest.raises(ValueError, match="more than 3 points"):
        precision_recall(real, real[:3])


def test_blur_keeps_the_mean_and_smooths_an_impulse():
    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 7, 7] = 1.0
    y = gaussian_blur(x, 1.0)
    assert y.shape == x.shape and float(y.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(y[0, 0, 7, 7]) == pytest.approx(1 / (2 * np.pi), rel=0.05)  # the 2-D Gaussian's peak for σ = 1
    assert float(y[0, 0, 7, 8]) == pytest.approx(float(y[0, 0, 8, 7]))  # separable in both directions alike


def test_the_evaluate_keys_are_validated():
    from tests.conftest import TINY
    from vaeflow import config as cfg

    for override, message in [("evaluate.pr_k=0", r"evaluate.n_fd_samples \(128\) must exceed evaluate.pr_k \(0\) ≥ 1"),
                              ("evaluate.blur_sigma=0", "evaluate.blur_sigma must be > 0"),
                              ("evaluate.classifier.lr=0", "evaluate.classifier.lr must be > 0"),
                              ("evaluate.classifier.depth=4", "unknown key evaluate.classifier.depth")]:
        with pytest.raises(ConfigError, match=message):
            cfg.load(TINY, overrides=[override])


def _two_class_images(n: int, seed: int):
    """Synthetic 16×16 images of two classes: a bright top half (0) or a bright bottom half (1), plus noise."""
    from vaeflow.modalities.image.data import ImageDataset

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.integers(0, 60, size=(n, 1, 16, 16))
    for i, label in enumerate(y):
        x[i, 0, 8 * label : 8 * label + 8] += 180
    return ImageDataset(x.astype(np.uint8), y.astype(np.int64))


def test_the_classifier_learns_saves_and_loads_with_the_same_features(tmp_path):
    from vaeflow.modalities.image.config import ClassifierConfig
    from vaeflow.modalities.image.quality import embed, fit_classifier, load_classifier, pixels, save_classifier

    train, test = _two_class_images(128, 0), _two_class_images(64, 1)
    config = ClassifierConfig(epochs=4, batch_size=32, width=4, feature_dim=8)
    model, metrics = fit_classifier(train, test, 2, config, seed=0)
    assert metrics["test_accuracy"] > 0.95 and metrics["n_train"] == 128 and metrics["num_classes"] == 2
    again, _ = fit_classifier(train, test, 2, config, seed=0)  # seeded: the same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    save_classifier(model, metrics, tmp_path / "clf")
    loaded, saved = load_classifier(tmp_path / "clf")
    assert saved == metrics
    np.testing.assert_array_equal(embed(loaded, pixels(test), 16), embed(model.eval(), pixels(test), 16))
    assert embed(loaded, pixels(test), 16).shape == (64, 8)


def test_unlabelled_images_get_no_classifier_and_evaluate_says_why(tmp_path, caplog):
    """Your own images without class subfolders: the classifier stage records why, evaluate adds no FD."""
    from tests.conftest import TINY
    from vaeflow import config as cfg
    from vaeflow import registry, stages

    paths = stages.Paths.for_modality("image", tmp_path)
    paths.processed.mkdir(parents=True)
    for split in ("train", "test"):
        np.savez(paths.processed / f"{split}.npz", x=np.zeros((8, 1, 16, 16), np.uint8), y=np.zeros(8, np.int64))
    (paths.processed / "spec.json").write_text(json.dumps({"channels": 1, "height": 16, "width": 16, "num_classes": 0}))
    recorded = stages.classifier(cfg.load(TINY), paths)
    assert recorded["test_accuracy"] is None and "needs at least 2" in recorded["skipped"]
    assert json.loads((paths.metrics / "classifier.json").read_text()) == recorded
    task = registry.MODALITIES["image"].task
    with caplog.at_level("WARNING"):
        assert task.evaluation_metrics(torch.nn.Linear(1, 1), cfg.load(TINY), paths, tmp_path, torch.Generator()) == {}
    assert "no FD, precision or recall" in caplog.text


# --- through the stages ---------------------------------------------------------------------------------


def test_classifier_stage_is_for_images_only(tmp_path):
    from tests.conftest import MOL_TINY
    from vaeflow import config as cfg
    from vaeflow import stages

    with pytest.raises(ConfigError, match="the classifier stage is for images"):
        stages.classifier(cfg.load(MOL_TINY), stages.Paths.for_modality("molecule", tmp_path))


# Measured 90 s (plus 20 s of Ray start-up) on the 2 shared cores under a load average of about 10
# (2026-12-03): a Ray fit of the tiny VAE, the classifier stage, evaluate.
@pytest.mark.slow
def test_classifier_stage_then_evaluate_reports_fd_precision_recall(project, ray_cluster):
    from tests.conftest import tiny_config
    from vaeflow import stages, tracking
    from vaeflow.modalities.image.quality import load_classifier

    config = tiny_config(project, "evaluate.n_fd_samples=256")
    paths = stages.Paths.for_modality("image", project)
    scores = stages.classifier(config, paths, progress=False)
    recorded = json.loads((paths.metrics / "classifier.json").read_text())
    assert recorded == scores and recorded["n_train"] == 512 and recorded["n_test"] == 256
    assert 0.3 < recorded["test_accuracy"] <= 1  # 10 classes: chance is 0.1 (3 epochs on 512 images)
    classifier, saved = load_classifier(paths.classifier)  # weights_only=True inside
    assert saved["test_accuracy"] == recorded["test_accuracy"] and classifier.kwargs["feature_dim"] == 16

    stages.train(config, paths, progress=False)
    ev = stages.evaluate(config, paths, progress=False)
    assert json.loads((paths.metrics / "evaluate.json").read_text()) == ev
    for suffix in ("", "_train_vs_test", "_blurred_test"):
        assert ev[f"fd{suffix}"] >= 0 and 0 <= ev[f"precision{suffix}"] <= 1 and 0 <= ev[f"recall{suffix}"] <= 1
    # Real training images sit closer to the test set than blurred test images, and a one-epoch VAE's samples.
    assert ev["fd_train_vs_test"] < ev["fd_blurred_test"]
    assert ev["fd_train_vs_test"] < ev["fd"]
    assert ev["n_fd_samples"] == 256 and ev["n_fd_train"] == 256
    assert ev["classifier_test_accuracy"] == recorded["test_accuracy"]
    run = tracking.client(config.tracking).get_run(json.loads((paths.model / "run.json").read_text())["mlflow_run_id"])
    assert {"fd", "precision", "recall", "fd_train_vs_test", "fd_blurred_test"} <= set(run.data.metrics)
    assert run.data.params["evaluate.n_fd_samples"] == "256"

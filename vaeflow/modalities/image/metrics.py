"""Sample-quality metrics on feature vectors: the Fréchet distance and improved precision / recall.

Pure functions of two feature sets (numpy / torch / scipy only; nothing else from vaeflow), so the
closed-form and cross-implementation tests exercise exactly what ``evaluate`` runs. The features
come from the in-domain classifier (``quality.py``); the formulas are those of FID (Heusel et al.
2017) and of Kynkäänniemi et al. 2019, but the numbers are not comparable with Inception FID.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class Gaussian:
    """Mean and covariance of a feature set. Shapes: mu (D,), sigma (D, D)."""

    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> Gaussian:
        """The sample mean and (unbiased) covariance, in float64. Shapes: features (N, D), N ≥ 2."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or len(f) < 2:
            raise ValueError(f"need an (N, D) feature array with N ≥ 2 to fit a covariance, got shape {f.shape}")
        return cls(mu=f.mean(0), sigma=np.cov(f, rowvar=False))


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray, method: Literal["eigen", "sqrtm"] = "eigen") -> float:
    """Tr((Σ1 Σ2)^{1/2}) for covariance matrices.

    ``eigen`` uses the symmetric form Tr((Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}) (the same eigenvalues as Σ1 Σ2,
    but of a symmetric PSD matrix, so one ``eigh`` and no complex round-off). ``sqrtm`` is the form
    pytorch-fid uses, scipy's general matrix square root of the non-symmetric product; it serves as
    the second implementation the tests compare against.
    """
    if method == "eigen":
        r = _psd_sqrt(s1)
        m = r @ s2 @ r
        w = np.linalg.eigvalsh((m + m.T) / 2)
        return float(np.sqrt(np.clip(w, 0, None)).sum())
    if method == "sqrtm":
        from scipy import linalg

        root = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(root).all():  # singular product: pytorch-fid's remedy, a tiny ridge on both
            ridge = np.eye(len(s1)) * 1e-6
            root = linalg.sqrtm((s1 + ridge) @ (s2 + ridge))
        return float(np.real(np.trace(root)))
    raise ValueError(f"unknown method {method!r}; use 'eigen' or 'sqrtm'")


def frechet_distance(a: Gaussian, b: Gaussian, method: Literal["eigen", "sqrtm"] = "eigen") -> float:
    """Fréchet (2-Wasserstein) distance between two Gaussians: ||μ1−μ2||² + Tr(Σ1+Σ2−2(Σ1Σ2)^{1/2}).

    Squared units of the features, as FID reports it (Heusel et al. 2017, https://arxiv.org/abs/1706.08500).
    """
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace_sqrt_product(a.sigma, b.sigma, method))


def _kth_neighbour_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row. Shapes: x (N, D) → (N,)."""
    radii = []
    for start in range(0, len(x), chunk):
        d = torch.cdist(x[start : start + chunk], x)  # (chunk, N); each row's own 0 is its 1st neighbour
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _inside_manifold(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """Whether each point lies in at least one ball (centre, radius). Shapes: points (M, D) → (M,) bool."""
    inside = []
    for start in range(0, len(points), chunk):
        d = torch.cdist(points[start : start + chunk], centres)  # (chunk, N)
        inside.append((d <= radii[None]).any(dim=1))
    return torch.cat(inside)


@dataclasses.dataclass(frozen=True)
class PrecisionRecall:
    """Improved precision (generated points on the real manifold) and recall (real points on the generated one)."""

    precision: float
    recall: float


def precision_recall(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int = 3,
                     chunk: int = 1024) -> PrecisionRecall:
    """Improved precision and recall with k-NN manifolds (Kynkäänniemi et al. 2019, https://arxiv.org/abs/1904.06991).

    Each set's manifold is the union of balls around its points, each ball reaching that point's
    k-th nearest neighbour in the same set. Precision is the fraction of ``fake`` inside the real
    manifold; recall the fraction of ``real`` inside the fake manifold.

    Args:
        real: reference features (the test set).
        fake: features of the set to score (samples, or a reference such as the training set).
        k: the neighbour that sets each radius (the paper's default is 3); each set needs more than k points.
        chunk: rows per distance block (memory: chunk × N floats).

    Shapes: real (N, D), fake (M, D).
    """
    real_t, fake_t = (torch.as_tensor(np.asarray(s), dtype=torch.float32) for s in (real, fake))
    if min(len(real_t), len(fake_t)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points in each set, "
                         f"got {len(real_t)} real and {len(fake_t)} generated")
    real_radii = _kth_neighbour_radii(real_t, k, chunk)
    fake_radii = _kth_neighbour_radii(fake_t, k, chunk)
    return PrecisionRecall(
        precision=float(_inside_manifold(fake_t, real_t, real_radii, chunk).float().mean()),
        recall=float(_inside_manifold(real_t, fake_t, fake_radii, chunk).float().mean()),
    )

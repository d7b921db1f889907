"""Time-series metrics: TimeGAN's post-hoc scores, autocorrelation, AUROC and F1 of anomaly scores.

Discriminative and predictive scores follow Yoon et al. 2019 (TimeGAN,
https://papers.nips.cc/paper/2019/hash/c9efe5f26cd17ba6216bbe2a7d26d490-Abstract.html), as
TimeVAE (Desai et al. 2021, https://arxiv.org/abs/2111.08095) also reports them:

- discriminative: a 1-layer GRU (hidden = channels // 2) trained to tell real from generated
  windows on 80 % of each, tested on the other 20 %; score = |accuracy − 0.5| (0 is best).
- predictive (train on synthetic, test on real): a 1-layer GRU trained on generated windows to
  predict the last channel one step ahead from the other channels (a univariate series predicts
  itself), then scored by mean absolute error on the real windows (lower is better).

Both are repeated over several seeds and reported as mean and standard deviation. One deviation
from TimeGAN's code: the predictor's output is linear, not a sigmoid, so standard-scaled data work.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

# --- TimeGAN post-hoc scores ----------------------------------------------------------------------


@dataclasses.dataclass
class PosthocScore:
    """A score repeated over seeds. Attributes: mean, std (over seeds) and the per-seed values."""

    mean: float
    std: float
    values: list[float]


class _GRUHead(nn.Module):
    """GRU over a window, then a linear head on every step (``per_step``) or on the last state.

    Shapes:
        x: (N, T, C_in) → (N, T, out) if per_step else (N, out)
    """

    def __init__(self, channels: int, hidden: int, out: int, *, per_step: bool):
        super().__init__()
        self.gru = nn.GRU(channels, hidden, batch_first=True)
        self.head = nn.Linear(hidden, out)
        self.per_step = per_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, last = self.gru(x)  # h: (N, T, H); last: (1, N, H)
        return self.head(h if self.per_step else last[0])


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one thread for the block. The post-hoc GRUs are tiny (C/2 units, 128 windows a step):
    a second intra-op thread only adds synchronisation, and on a loaded machine its spin-waits made
    a step 8× slower (measured at load average 5 on 2 cores: 300 steps on Stocks-sized windows took
    13.7–15.4 s with 2 threads, 1.7–1.8 s with one). The caller's thread count is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Any, *, steps: int, batch: int,
         generator: torch.Generator) -> None:
    opt = torch.optim.Adam(model.parameters())
    with _one_thread():
        for _ in range(steps):
            idx = torch.randint(0, len(x), (min(batch, len(x)),), generator=generator)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()


def _seeded_model(seed: int, *args: Any, **kwargs: Any) -> _GRUHead:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _GRUHead(*args, **kwargs)


def _summary(values: list[float]) -> PosthocScore:
    return PosthocScore(float(np.mean(values)), float(np.std(values)), [float(v) for v in values])


def discriminative_score(real: np.ndarray, fake: np.ndarray, *, seeds: int = 3, steps: int = 2000,
                         seed: int = 0, batch: int = 128) -> PosthocScore:
    """|accuracy − 0.5| of a post-hoc GRU classifier, real vs generated (0: indistinguishable).

    Shapes:
        real: (N, T, C); fake: (M, T, C), same scaling as real.
    """
    real_t, fake_t = torch.as_tensor(real, dtype=torch.float32), torch.as_tensor(fake, dtype=torch.float32)
    channels = real.shape[2]
    values = []
    for s in range(seeds):
        g = torch.Generator().manual_seed(seed * 1000 + s)
        pr, pf = torch.randperm(len(real_t), generator=g), torch.randperm(len(fake_t), generator=g)
        nr, nf = int(0.8 * len(real_t)), int(0.8 * len(fake_t))
        x_train = torch.cat([real_t[pr[:nr]], fake_t[pf[:nf]]])
        y_train = torch.cat([torch.ones(nr), torch.zeros(nf)])[:, None]
        x_test = torch.cat([real_t[pr[nr:]], fake_t[pf[nf:]]])
        y_test = torch.cat([torch.ones(len(real_t) - nr), torch.zeros(len(fake_t) - nf)])[:, None]
        model = _seeded_model(seed * 1000 + s, channels, max(channels // 2, 1), 1, per_step=False)
        _fit(model, x_train, y_train, nn.functional.binary_cross_entropy_with_logits, steps=steps, batch=batch, generator=g)
        with torch.no_grad():
            acc = ((model(x_test) > 0).float() == y_test).float().mean().item()
        values.append(abs(acc - 0.5))
    return _summary(values)


def _predictive_pairs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and one-step-ahead targets. Shapes: (N, T, C) → (N, T-1, max(C-1, 1)), (N, T-1, 1)."""
    if x.shape[2] == 1:
        return x[:, :-1], x[:, 1:]
    return x[:, :-1, :-1], x[:, 1:, -1:]


def predictive_score(train: np.ndarray, test: np.ndarray, *, seeds: int = 3, steps: int = 2000,
                     seed: int = 0, batch: int = 128) -> PosthocScore:
    """MAE on ``test`` of a GRU next-step predictor fitted on ``train`` (TSTR: train = generated).

    Shapes:
        train: (N, T, C); test: (M, T, C)
    """
    x_tr, y_tr = _predictive_pairs(torch.as_tensor(train, dtype=torch.float32))
    x_te, y_te = _predictive_pairs(torch.as_tensor(test, dtype=torch.float32))
    channels = train.shape[2]
    values = []
    for s in range(seeds):
        g = torch.Generator().manual_seed(seed * 1000 + s)
        model = _seeded_model(seed * 1000 + s, x_tr.shape[2], max(channels // 2, 1), 1, per_step=True)
        _fit(model, x_tr, y_tr, nn.functional.l1_loss, steps=steps, batch=batch, generator=g)
        with torch.no_grad():
            values.append((model(x_te) - y_te).abs().mean().item())
    return _summary(values)


# --- autocorrelation and embeddings ---------------------------------------------------------------


def autocorrelation(x: np.ndarray, max_lag: int | None = None) -> np.ndarray:
    """Mean over windows of each window's per-channel autocorrelation at lags 1 … max_lag.

    Shapes:
        x: (N, T, C) → (max_lag, C); max_lag defaults to T // 2.
    """
    n, t, c = x.shape
    max_lag = max_lag or t // 2
    centred = x - x.mean(1, keepdims=True)
    var = (centred**2).sum(1)  # (N, C)
    acf = np.stack([(centred[:, lag:] * centred[:, :-lag]).sum(1) for lag in range(1, max_lag + 1)], 1)  # (N, L, C)
    with np.errstate(invalid="ignore", divide="ignore"):
        acf = np.where(var[:, None] > 1e-12, acf / var[:, None], 0.0)
    return acf.mean(0)


def autocorrelation_distance(real: np.ndarray, fake: np.ndarray, max_lag: int | None = None) -> float:
    """Mean absolute difference of the mean autocorrelation functions (0: identical)."""
    return float(np.abs(autocorrelation(real, max_lag) - autocorrelation(fake, max_lag)).mean())


# --- anomaly detection ---------------------------------------------------------------------------


def auroc(scores: np.ndarray, is_anomaly: np.ndarray) -> float:
    """Area under the ROC curve (the Mann–Whitney U statistic, ties counted half)."""
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(is_anomaly, dtype=bool)
    pos, neg = scores[y], scores[~y]
    if not len(pos) or not len(neg):
        raise ValueError("AUROC needs both normal and anomalous examples")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    allv = np.concatenate([pos, neg])
    for v in np.unique(allv):  # average ranks over ties
        m = allv == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def best_f1(scores: np.ndarray, is_anomaly: np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds (score ≥ threshold flags a window), without point adjustment.

    Returns:
        (F1, threshold)
    """
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(is_anomaly, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    s, yy = scores[order], y[order]
    tp = np.cumsum(yy)
    fp = np.cumsum(~yy)
    last = np.r_[s[1:] != s[:-1], True]  # evaluate only at the last index of each tied score
    precision = tp / (tp + fp)
    recall = tp / max(y.sum(), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    f1 = np.where(last, f1, -1)
    i = int(np.argmax(f1))
    return float(f1[i]), float(s[i])

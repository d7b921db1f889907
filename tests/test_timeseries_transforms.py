"""Stationarising transforms (data.transform, data.window_scaling): exact inverses, bad input, drift.

Real Stocks rows come from the data mirror (VAEFLOW_DATA_MIRROR); the slow test runs the tiny Stocks
preset (log-returns, as the quick preset and params.yaml) through prepare / train / sample / evaluate.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vaeflow import stages
from vaeflow import config as cfg
from vaeflow.config import ConfigError
from vaeflow.modalities.timeseries.config import TimeSeriesDataConfig as DataConfig
from vaeflow.modalities.timeseries.data import (DATASETS, RawSeries, SeriesDataError, build_windows,
                                                model_windows, to_real_units)
from tests.conftest import ROOT

TS_TINY = ROOT / "configs/timeseries/tiny.yaml"
STATIONARY = [dict(transform="log_return"), dict(transform="diff"), dict(window_scaling="first")]


@pytest.fixture(scope="module")
def stocks() -> RawSeries:
    return DATASETS.get("stocks").load()


def random_walk(steps: int = 400, channels: int = 2) -> np.ndarray:
    """A positive geometric random walk with drift (T, C): its level leaves any range fitted on its start."""
    rng = np.random.default_rng(7)
    return 100 * np.exp(np.cumsum(0.01 + 0.02 * rng.standard_normal((steps, channels)), axis=0))


def real_windows(values: np.ndarray, window: int, stride: int, offset: int) -> np.ndarray:
    """The real levels each stationary window covers (they start ``offset`` steps later). Shapes: (N, window, C)."""
    starts = np.arange(0, len(values) - offset - window + 1, stride) + offset
    return np.stack([values[s : s + window] for s in starts])


@pytest.mark.parametrize("kw", STATIONARY, ids=lambda kw: "-".join(kw.values()))
@pytest.mark.parametrize("source", ["stocks", "random_walk"])
def test_transform_then_inverse_gives_back_the_real_values(kw, source, stocks):
    values = stocks.series[:600] if source == "stocks" else random_walk()
    raw = RawSeries([f"c{i}" for i in range(values.shape[1])], series=values)
    config = DataConfig(window=24, stride=5, val_fraction=0.0, test_fraction=0.0, **kw)
    built = build_windows(raw, config, seed=0)
    x, _, _ = built.splits["train"]
    spec = {"scaler": built.scaler.to_dict(), "stationary": built.stationariser.to_dict(), "channel_names": raw.channel_names}
    back = to_real_units(spec, x.astype(np.float64), built.anchors["train"])
    offset = 0 if kw.get("window_scaling") else 1  # a change at step t is x_t against x_{t-1}
    np.testing.assert_allclose(back, real_windows(values, 24, 5, offset), rtol=1e-5)  # float32 model units
    # The model-unit windows the anomaly command cuts from a series are the ones prepare made.
    np.testing.assert_allclose(model_windows(spec, values, 24, 5), x, rtol=1e-5, atol=1e-6)
    # Exact in float64: the inverse undoes the transform, not just approximately.
    st = built.stationariser
    v, levels = st.series(values, names=raw.channel_names, where="test")
    w = st.windows(v[None, :24], levels[:1])
    np.testing.assert_allclose(st.inverse(w, levels[:1])[0], values[offset : offset + 24], rtol=1e-12)


def test_untransformed_data_need_only_the_scaler():
    spec = {"scaler": {"kind": "minmax", "offset": [1.0, 2.0], "scale": [2.0, 4.0]}}  # no stationary entry
    np.testing.assert_allclose(to_real_units(spec, np.ones((3, 5, 2))), np.broadcast_to([3.0, 6.0], (3, 5, 2)))


def test_generated_windows_start_from_the_training_span_s_last_level():
    values = random_walk()
    built = build_windows(RawSeries(["a", "b"], series=values), DataConfig(window=24, transform="log_return"), seed=0)
    n_train = len(values) - 2 * round(len(values) * 0.15)
    assert built.stationariser.start_level == pytest.approx(tuple(values[n_train - 1]))
    zero_returns = np.zeros((3, 24, 2))
    assert np.allclose(built.stationariser.inverse(zero_returns), values[n_train - 1])


@pytest.mark.parametrize("kw", [dict(transform="log_return"), dict(window_scaling="first")])
def test_non_positive_values_name_the_channel_and_say_use_diff(kw):
    values = random_walk()
    values[50, 1] = 0.0
    with pytest.raises(SeriesDataError) as err:
        build_windows(RawSeries(["price", "volume"], series=values), DataConfig(window=24, **kw), seed=0)
    message = str(err.value)
    assert "'volume'" in message and "data.transform: diff" in message and "\n" not in message
    built = build_windows(RawSeries(["price", "volume"], series=values), DataConfig(window=24, transform="diff"), seed=0)
    assert np.isfinite(built.splits["train"][0]).all()


@pytest.mark.parametrize(("override", "message"), [
    ("data.transform=log", "data.transform"),
    ("data.window_scaling=max", "data.window_scaling"),
    ("data.window_scaling=first", "set one of them to none"),  # the tiny preset already takes log-returns
])
def test_bad_transform_keys_are_one_line_config_errors(override, message):
    with pytest.raises(ConfigError) as err:
        cfg.load(TS_TINY, overrides=[override])
    assert message in str(err.value) and "\n" not in str(err.value)


def _within(kw: dict[str, str], stocks: RawSeries) -> float:
    """The fraction of held-out future values inside the training split's range (per channel; [0, 1] for minmax)."""
    built = build_windows(stocks, DataConfig(window=24, stride=4, **kw), seed=0)
    train, test = built.splits["train"][0], built.splits["test"][0]
    return float(((test >= train.min((0, 1))) & (test <= train.max((0, 1)))).mean())


def test_time_split_keeps_the_future_in_the_training_range_only_when_stationarised(stocks):
    raw_test = build_windows(stocks, DataConfig(window=24, stride=4), seed=0).splits["test"][0]
    assert raw_test.max() > 2  # minmax-scaled prices of the held-out future leave [0, 1] far behind
    assert _within({}, stocks) < 0.5
    assert _within(dict(transform="log_return"), stocks) == 1.0
    assert _within(dict(window_scaling="first"), stocks) == 1.0
    # Differences of prices grow with the price (×20 over the span): why Stocks take log-returns.
    assert _within(dict(transform="diff"), stocks) < 0.99


@pytest.mark.slow
def test_stocks_pipeline_reports_both_disc_scores_and_samples_prices(tmp_path, ray_cluster):
    """The tiny Stocks preset (log-returns) through prepare / train / sample / evaluate. Measured: 308 s (+45 s Ray start) on 2 cores at load ~26; one epoch, 2 × 20 post-hoc steps."""
    config = cfg.load(TS_TINY, overrides=[
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_location={tmp_path}/mlartifacts",
        f"train.storage_path={tmp_path}/ray_results"])
    assert config.data.transform == "log_return"
    paths = stages.Paths.for_modality("timeseries", tmp_path)
    stages.prepare(config, paths, progress=False)
    spec = json.loads((paths.processed / "spec.json").read_text())
    assert spec["stationary"]["transform"] == "log_return" and len(spec["stationary"]["start_level"]) == 6
    stages.train(config, paths, progress=False)
    stages.sample(config, paths)
    with np.load(paths.samples / "samples.npz") as f:
        samples, scaled = f["samples"], f["scaled"]
    real = to_real_units(spec, scaled)  # float64; samples.npz stores float32
    np.testing.assert_array_equal(samples, real.astype(np.float32))
    # Prices and volumes, from the training span's last level. (After one epoch some generated
    # log-returns are wild enough that a float32 price underflows to 0, so positivity is on float64.)
    assert (real > 0).all() and np.isfinite(samples).all()
    # The first generated step is the start level times the first generated return.
    first_returns = to_real_units({"scaler": spec["scaler"]}, scaled)[:, 0]
    np.testing.assert_allclose(real[:, 0], np.asarray(spec["stationary"]["start_level"]) * np.exp(first_returns),
                               rtol=1e-6)
    stages.evaluate(config, paths, progress=False)
    written = json.loads((paths.metrics / "evaluate.json").read_text())
    for split in ("train", "test"):  # against the span the model was fitted on, and the held-out future
        assert 0 <= written[f"discriminative_score_{split}"] <= 0.5

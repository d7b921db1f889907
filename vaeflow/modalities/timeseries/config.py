"""The time-series modality's own config sections: what its data side, task side and ``stages`` read."""

from __future__ import annotations

import dataclasses
from typing import Literal

from vaeflow.config import DataConfig, EvaluateConfig, SampleConfig, require, require_positive


@dataclasses.dataclass(frozen=True)
class TimeSeriesDataConfig(DataConfig):
    """``data``: a long series cut into windows (TimeGAN's sets) or whole UCR/UEA series, and its cleaning."""

    dataset: str = "stocks"
    # Sliding-window length and step in time steps (24 as in TimeGAN, Yoon et al. 2019); a null
    # window keeps each series whole (UCR/UEA sets), padding shorter ones to the longest.
    window: int | None = 24
    stride: int = 1
    # Fractions of a long series' time span held out at its end, in time order (train | val | test),
    # so no window crosses a split. Sets of separate series (UCR/UEA) keep the official test split
    # and hold out val_fraction of their training series, chosen with the job seed.
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # How a long series is split: "time" (the spans above, scaler fitted on the train span) or
    # "shuffled", the TimeGAN/TimeVAE papers' protocol: the whole series scaled together, cut into
    # windows, and the windows shuffled (with the seed) before the fractions are taken. Overlapping
    # windows then share time steps across splits, so validation and test scores are optimistic;
    # use it to compare with published numbers, not to estimate how a model does on the future.
    # "series" (your own files with several series): whole series dealt to train / val / test by the
    # fractions with the seed, for sets of many short series; with one long series use "time".
    split: Literal["time", "shuffled", "series"] = "time"
    # Per-channel scaling fitted on the training split only: minmax to [0, 1] (TimeGAN) or standard.
    scaling: Literal["minmax", "standard"] = "minmax"
    # A stationarising transform applied to each cleaned series before windowing and scaling, so
    # that a drifting series (prices) keeps its held-out future inside the range fitted on the past:
    # log_return (log x_t − log x_{t−1}, for positive values such as prices and volumes), diff
    # (x_t − x_{t−1}, any sign) or none. Each costs a series its first step. Samples are turned back
    # into real units from the training data's last level (docs/timeseries.md).
    transform: Literal["none", "log_return", "diff"] = "none"
    # Per-window scaling of levels (transform none): first divides each window by its first step's
    # values (prices relative to the window's start); none keeps the levels.
    window_scaling: Literal["none", "first"] = "none"
    # NaN/inf values: impute (carry the last finite value forward, the first one backward), drop
    # (the time steps that hold one), reject (stop with an error). Counts go to prepare.json.
    missing: Literal["impute", "drop", "reject"] = "impute"
    # Channels constant over the training split: drop them, keep them (scaled to 0), or reject.
    constant_channels: Literal["drop", "keep", "reject"] = "drop"
    # Series shorter than a window: drop them, pad them (padding is masked out of the likelihood),
    # or reject. With a null window, unequal lengths are padded unless this is reject.
    short_series: Literal["drop", "pad", "reject"] = "pad"
    # Seeded subsets of the windows (or series); None keeps the whole split.
    limit_train: int | None = None
    limit_test: int | None = None
    # --- your own file (source: files, docs/timeseries.md) ------------------------------------------
    # wide: one row per time step, one column per channel (one series); long: one row per (series,
    # time step), several series told apart by series_column, each with an optional label.
    layout: Literal["wide", "long"] = "wide"
    # The time column (dates/times or numbers); rows are sorted by it. None: the rows are in time order.
    time_column: str | None = None
    # strftime format of the time column (e.g. "%d-%b-%y"); None reads ISO 8601 dates and times.
    time_format: str | None = None
    # The sampling interval: a number (numeric times) or a pandas frequency ("D", "B" business days,
    # "15min", "h"); None infers it per series as the median step. Steps missing from that grid are gaps.
    frequency: str | float | None = None
    series_column: str | None = None  # long layout: the series id
    label_column: str | None = None  # long layout: one label per series (feeds model.conditional)
    # The channels; None: every column other than the time, series and label columns.
    value_columns: list[str] | None = None
    # CSV field separator; None: a tab for .tsv(.gz), a comma otherwise.
    delimiter: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.window is None or self.window >= 2,
                f"data.window must be ≥ 2 time steps (or null for whole series), got {self.window}")
        require_positive("data", stride=self.stride)
        v, t = self.val_fraction, self.test_fraction
        require(0 <= v < 1 and 0 <= t < 1 and v + t < 1,
                f"data.val_fraction ({v}) and data.test_fraction ({t}) must be in [0, 1) and sum to less than 1")
        for key in ("limit_train", "limit_test"):
            value = getattr(self, key)
            require(value is None or value >= 0, f"data.{key} must be ≥ 0 or null (the whole split), got {value}")
        if self.layout == "long":
            require(bool(self.series_column), "data.layout is long but data.series_column is not set; name the "
                    "column that holds the series id (or use data.layout: wide for one series)")
        else:
            for key in ("series_column", "label_column"):
                require(getattr(self, key) is None, f"data.{key} is for data.layout: long (several series in one "
                        "file, one label per series); set data.layout: long or remove it")
        named = [c for c in (self.time_column, self.series_column, self.label_column) if c]
        require(len(set(named)) == len(named), f"data.time_column, series_column and label_column must be "
                f"different columns, got {named}")
        require(self.value_columns is None or (len(self.value_columns) > 0 and not set(self.value_columns) & set(named)),
                "data.value_columns must list at least one column, none of them the time, series or label column")
        require(self.frequency is None or isinstance(self.frequency, str) or self.frequency > 0,
                f"data.frequency must be a pandas frequency such as 'D', a number > 0, or null, got {self.frequency}")
        require(self.window_scaling == "none" or self.transform == "none",
                f"data.window_scaling: first divides levels by the window's first value, but data.transform "
                f"{self.transform} already gives changes that cross zero; set one of them to none")
        require(self.delimiter is None or len(self.delimiter) == 1,
                f"data.delimiter must be one character (e.g. ',' or '\\t'), got {self.delimiter!r}")


@dataclasses.dataclass(frozen=True)
class TimeSeriesSampleConfig(SampleConfig):
    """``sample``: the common keys plus the length of the generated series."""

    # Time steps per generated series; None: the training window. Longer series need a family that
    # generates any length (the vrnn rolls its prior forward); the whole-window VAEs cannot.
    length: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.length is None or self.length >= 1,
                f"sample.length must be ≥ 1 time steps (or null for the training window), got {self.length}")


@dataclasses.dataclass(frozen=True)
class TimeSeriesEvaluateConfig(EvaluateConfig):
    """``evaluate``: the common keys plus the post-hoc scores and the anomaly scores' samples."""

    # Post-hoc scores of generated data (the TimeGAN discriminative and predictive scores): seeds
    # averaged over, and optimiser steps of each post-hoc GRU (TimeGAN: 2000).
    posthoc_seeds: int = 3
    posthoc_steps: int = 2000
    # Monte-Carlo samples of z per window for anomaly scores (reconstruction probability), read by
    # `vaeflow anomaly` from the current config (its --k wins).
    anomaly_k: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("evaluate", posthoc_seeds=self.posthoc_seeds, posthoc_steps=self.posthoc_steps,
                         anomaly_k=self.anomaly_k)

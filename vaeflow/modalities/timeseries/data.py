"""Time-series modality: long series (Stocks, Energy) or sets of series (UCR/UEA) → scaled windows.

Processed layout (``data/processed/timeseries/``): ``train.npz``, ``val.npz``, ``test.npz`` each with
``x`` float32 of shape (N, T, C) in scaled units (NaN only where a shorter series was padded),
``y`` int64 labels (-1 for unlabelled data) and ``lengths`` int64; ``spec.json`` (length, channels,
classes, the fitted scaler, channel names) and ``scaler.json`` (the same scaler on its own).

Splits are made in time order before windowing (a long series is cut into train | val | test
spans), so no window of the validation or test split overlaps the training span; the scaler is
fitted on the training split alone. A drifting series can first be made stationary
(``data.transform``: log-returns or differences; ``data.window_scaling``: each window relative to its
first step); the splits then also hold ``anchor`` (N, C) float64, the real level each window is
measured from, and ``spec.json`` a ``stationary`` entry, so that windows and samples go back to real
units (:func:`to_real_units`). Bad input is handled as ``data.missing``,
``data.constant_channels`` and ``data.short_series`` say, and every handled case is counted in
the prepare metrics.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaeflow.modalities.timeseries.config import TimeSeriesDataConfig as DataConfig
from vaeflow.modalities.base import ModalityData, ModelInputs
from vaeflow.modalities.timeseries.errors import SeriesDataError
from vaeflow.modalities.timeseries.files import read_series_file, write_rejects
from vaeflow.download import RemoteFile, fetch
from vaeflow.io import atomic_path
from vaeflow.registry import DATASETS
from vaeflow.splits import subset

SPLITS = ("train", "val", "test")


# --- raw sources ---------------------------------------------------------------------------------


@dataclasses.dataclass
class RawSeries:
    """What a source yields before cleaning: per split, a list of (T_i, C) float arrays and labels.

    ``splits`` is None for one long series (``series``) that prepare cuts by time, or for several
    series without a given split (``many``, a user's file), which ``data.split`` cuts.
    """

    channel_names: list[str]
    series: np.ndarray | None = None  # (T, C) for one long series
    splits: dict[str, tuple[list[np.ndarray], np.ndarray]] | None = None  # split → (series list, labels)
    class_names: list[str] = dataclasses.field(default_factory=list)
    many: tuple[list[np.ndarray], np.ndarray] | None = None  # (series list, labels) with no split yet


def read_numeric_csv(text: str, *, name: str, channels: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Parse a CSV of numbers (one header row if its first field is not a number).

    Empty fields and ``nan`` read as NaN (left for the missing-value policy); ragged rows and
    non-numbers raise :class:`SeriesDataError` naming the line.

    Shapes:
        returns values (T, C) float64 and C channel names.
    """
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if any(field.strip() for field in r)]
    if not rows:
        raise SeriesDataError(f"{name}: no rows")

    def number(field: str) -> float:
        field = field.strip()
        return float("nan") if field == "" else float(field)

    header: list[str] | None = None
    try:
        number(rows[0][0])
    except ValueError:
        header, rows = [h.strip() for h in rows[0]], rows[1:]
    width = len(header) if header else len(rows[0]) if rows else 0
    values = np.empty((len(rows), width))
    for i, row in enumerate(rows):
        line = i + (2 if header else 1)
        if len(row) != width:
            raise SeriesDataError(f"{name}: line {line} has {len(row)} fields, expected {width} (ragged rows)")
        try:
            values[i] = [number(f) for f in row]
        except ValueError:
            raise SeriesDataError(f"{name}: line {line} holds a value that is not a number: {row}") from None
    if channels is not None and width != channels:
        raise SeriesDataError(f"{name}: {width} channels, but the model was trained on {channels}")
    return values, header or [f"ch{i}" for i in range(width)]


@dataclasses.dataclass(frozen=True)
class CsvSeries:
    """One long multichannel series in a CSV file (rows = time steps, in time order)."""

    file: RemoteFile

    def load(self) -> RawSeries:
        path = fetch(self.file)
        values, names = read_numeric_csv(path.read_text(), name=self.file.name)
        return RawSeries(channel_names=names, series=values)


@dataclasses.dataclass(frozen=True)
class WindowedNpzSeries:
    """A long series published as its stride-1 windows (TimeVAE's npz files): rebuilt, then re-split."""

    file: RemoteFile
    channel_names: tuple[str, ...] = ()

    def load(self) -> RawSeries:
        with np.load(fetch(self.file)) as f:
            windows = f["data"].astype(np.float64)  # (N, T, C)
        # Consecutive windows overlap by T - 1 steps: the series is the first window plus each last step.
        if len(windows) > 1 and not np.array_equal(windows[1:, :-1], windows[:-1, 1:]):
            raise SeriesDataError(f"{self.file.name}: windows are not consecutive stride-1 windows of one series")
        series = np.concatenate([windows[0], windows[1:, -1]])  # (T + N - 1, C)
        names = list(self.channel_names) or [f"ch{i}" for i in range(series.shape[1])]
        return RawSeries(channel_names=names, series=series)


@dataclasses.dataclass(frozen=True)
class AeonClassification:
    """A UCR/UEA classification set as bundled in the ``aeon`` package (official train/test split)."""

    name: str

    def load(self) -> RawSeries:
        try:
            from aeon.datasets import load_classification
        except ImportError:
            raise SeriesDataError(f"data set {self.name!r} comes from the aeon package: pip install aeon") from None
        out: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}
        labels_seen: list[str] = []
        for split in ("train", "test"):
            x, y = load_classification(self.name, split=split)
            series = [np.asarray(s, dtype=np.float64).T for s in x]  # each (C, T_i) → (T_i, C)
            out[split] = (series, np.asarray(y).astype(str))
            labels_seen += list(out[split][1])
        class_names = sorted(set(labels_seen), key=lambda c: (len(c), c))
        index = {c: i for i, c in enumerate(class_names)}
        splits = {s: (xs, np.array([index[c] for c in ys], dtype=np.int64)) for s, (xs, ys) in out.items()}
        channels = splits["train"][0][0].shape[1]
        return RawSeries(channel_names=[f"dim{i}" for i in range(channels)], splits=splits, class_names=class_names)


DATASETS.register("stocks")(
    CsvSeries(RemoteFile(
        folder="timegan", name="stock_data.csv",
        url="https://raw.githubusercontent.com/jsyoon0823/TimeGAN/master/data/stock_data.csv",
        sha256="134b8a00eb4eefa3242dd7ae85144082da80dedf75a1a656d5d08f97cd95277a",
    ))
)
DATASETS.register("energy")(
    WindowedNpzSeries(RemoteFile(
        folder="timevae", name="energy_subsampled_train_perc_100.npz",
        url="https://github.com/abudesai/timeVAE/raw/main/data/energy_subsampled_train_perc_100.npz",
        sha256="5817c9fedd088fa443fe2fd0dfccb156b77b317310bedd5186f49bb249429e12",
    ))
)
DATASETS.register("air")(
    WindowedNpzSeries(RemoteFile(
        folder="timevae", name="air_subsampled_train_perc_100.npz",
        url="https://github.com/abudesai/timeVAE/raw/main/data/air_subsampled_train_perc_100.npz",
        sha256="b45e7a6b38ce1f4abd0bee253919457ba611ed7f5940a69a571f2b4060e4c10e",
    ))
)
# UCR (univariate) and UEA (multivariate) sets that ship inside aeon; JapaneseVowels and
# PickupGestureWiimoteZ have unequal lengths.
for _name in ("GunPoint", "ItalyPowerDemand", "ArrowHead", "OSULeaf", "BasicMotions",
              "JapaneseVowels", "PickupGestureWiimoteZ"):
    DATASETS.register(f"ucr-{_name.lower()}")(AeonClassification(_name))


def read_files_raw(config: DataConfig) -> tuple[RawSeries, dict[str, Any], list[dict[str, Any]]]:
    """A user's file (``data.source: files``) as a raw source, its counts and its rejects.csv rows."""
    got = read_series_file(config.path, config)
    class_names: list[str] = []
    labels = np.full(len(got.series), -1, dtype=np.int64)
    if got.labels is not None:
        class_names = sorted(set(got.labels), key=lambda c: (len(c), c))
        index = {c: i for i, c in enumerate(class_names)}
        labels = np.array([index[c] for c in got.labels], dtype=np.int64)
    if config.layout == "wide":
        raw = RawSeries(channel_names=got.channel_names, series=got.series[0])
    else:
        raw = RawSeries(channel_names=got.channel_names, many=(got.series, labels), class_names=class_names)
    return raw, got.counts, got.rejects


# --- cleaning, scaling, windowing (pure functions) ------------------------------------------------


def clean(series: np.ndarray, policy: str, counts: dict[str, int], *, where: str) -> np.ndarray | None:
    """Apply the missing-value policy to one series; add what was done to ``counts``.

    Returns None when the series has no finite value left in some channel (counted as
    ``series_all_missing`` and dropped, unless the policy is reject).

    Shapes:
        series: (T, C) → (T', C), T' = T unless steps are dropped.
    """
    bad = ~np.isfinite(series)
    n_bad = int(bad.sum())
    counts["nonfinite_values"] += n_bad
    if not n_bad:
        return series
    if policy == "reject":
        t, c = np.argwhere(bad)[0]
        raise SeriesDataError(f"{where}: {n_bad} NaN/inf values (first at step {t}, channel {c}); "
                              "set data.missing to impute or drop to handle them")
    if policy == "drop":
        keep = ~bad.any(1)
        counts["dropped_steps"] += int((~keep).sum())
        series = series[keep]
        if len(series) == 0:
            counts["series_all_missing"] += 1
            return None
        return series
    if bad.all(0).any():
        counts["series_all_missing"] += 1
        return None
    out = series.copy()
    out[bad] = np.nan
    for c in range(out.shape[1]):  # forward fill, then backward fill the leading gap
        col = out[:, c]
        idx = np.where(np.isfinite(col), np.arange(len(col)), 0)
        np.maximum.accumulate(idx, out=idx)
        first = np.flatnonzero(np.isfinite(col))[0]
        idx[:first] = first
        out[:, c] = col[idx]
    counts["imputed_values"] += n_bad
    return out


@dataclasses.dataclass(frozen=True)
class Scaler:
    """Per-channel affine scaling x' = (x - offset) / scale, fitted on the training split.

    Attributes:
        kind: ``minmax`` (to [0, 1]) or ``standard`` (zero mean, unit variance).
        offset, scale: one value per channel.
    """

    kind: str
    offset: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, values: np.ndarray, kind: str) -> tuple[Scaler, np.ndarray]:
        """Fit on (T, C) values; return the scaler and a mask of constant channels (scale set to 1).

        Shapes:
            values: (T, C) → constant: (C,) bool
        """
        if kind == "minmax":
            offset, spread = values.min(0), values.max(0) - values.min(0)
        else:
            offset, spread = values.mean(0), values.std(0)
        constant = ~(spread > 1e-12 * np.maximum(1.0, np.abs(offset)))
        spread = np.where(constant, 1.0, spread)
        return cls(kind, tuple(map(float, offset)), tuple(map(float, spread))), constant

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Shapes: (..., C) → (..., C)."""
        return (x - np.asarray(self.offset)) / np.asarray(self.scale)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """Back to real units. Shapes: (..., C) → (..., C)."""
        return x * np.asarray(self.scale) + np.asarray(self.offset)

    def select(self, channels: np.ndarray) -> Scaler:
        return Scaler(self.kind, tuple(np.asarray(self.offset)[channels]), tuple(np.asarray(self.scale)[channels]))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "offset": list(self.offset), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        return cls(d["kind"], tuple(d["offset"]), tuple(d["scale"]))


@dataclasses.dataclass(frozen=True)
class Stationariser:
    """Real levels ↔ stationary values: ``data.transform`` on a series, ``data.window_scaling`` per window.

    A window of stationary values is measured from an anchor, one real level per channel: the level
    just before its first change (log_return, diff) or its own first level (window_scaling: first).
    Generated windows have no anchor of their own; they start from ``start_level``, the training
    data's last level (for a time split: where the held-out future begins).

    Attributes:
        transform: ``none``, ``log_return`` or ``diff``.
        window_scaling: ``none`` or ``first``.
        start_level: one real level per kept channel.
    """

    transform: str = "none"
    window_scaling: str = "none"
    start_level: tuple[float, ...] = ()

    @property
    def active(self) -> bool:
        return (self.transform, self.window_scaling) != ("none", "none")

    @property
    def lost_steps(self) -> int:
        """Steps a series loses at its start (a change needs the level before it): the rows of the
        transformed series are the input's rows shifted by this many."""
        return 1 if self.transform in ("log_return", "diff") else 0

    def series(self, values: np.ndarray, *, names: list[str], where: str) -> tuple[np.ndarray, np.ndarray]:
        """Transform one series; also return each step's anchor (the level its window would start from).

        Raises:
            SeriesDataError: log-returns or window ratios of a channel with a value ≤ 0.

        Shapes:
            values: (T, C) → both (T - 1, C) for log_return / diff, (T, C) otherwise.
        """
        if self.transform == "log_return" or self.window_scaling == "first":
            bad = np.argwhere(values <= 0)
            if len(bad):
                t, c = bad[0]
                key = ("data.transform: log_return" if self.transform == "log_return"
                       else "data.window_scaling: first")
                raise SeriesDataError(f"{key} needs positive values, but channel {names[c]!r} holds {values[t, c]:g} "
                                      f"({where}, step {t}); use data.transform: diff for data that reach 0 or below")
        if self.transform == "log_return":
            return np.diff(np.log(values), axis=0), values[:-1]
        if self.transform == "diff":
            return np.diff(values, axis=0), values[:-1]
        return values, values

    def windows(self, x: np.ndarray, anchor: np.ndarray) -> np.ndarray:
        """Per-window scaling. Shapes: x (N, T, C), anchor (N, C) → (N, T, C)."""
        return x / anchor[:, None] if self.window_scaling == "first" else x

    def inverse(self, x: np.ndarray, anchor: np.ndarray | None = None) -> np.ndarray:
        """Stationary windows back to real levels, from their anchors or else from ``start_level``.

        Shapes:
            x: (N, T, C); anchor: (N, C) or None → (N, T, C)
        """
        if not self.active:  # levels already
            return x
        a = np.broadcast_to(np.asarray(self.start_level) if anchor is None else anchor, (len(x), x.shape[2]))[:, None]
        if self.transform == "log_return":
            return a * np.exp(np.cumsum(x, axis=1))
        if self.transform == "diff":
            return a + np.cumsum(x, axis=1)
        return x * a if self.window_scaling == "first" else x

    def select(self, channels: np.ndarray) -> Stationariser:
        return dataclasses.replace(self, start_level=tuple(np.asarray(self.start_level)[channels]))

    def to_dict(self) -> dict[str, Any]:
        return {"transform": self.transform, "window_scaling": self.window_scaling, "start_level": list(self.start_level)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Stationariser:
        """The spec's ``stationary`` entry; identity for data prepared without one."""
        d = spec.get("stationary") or {}
        return cls(d.get("transform", "none"), d.get("window_scaling", "none"), tuple(d.get("start_level", ())))


def to_real_units(spec: dict[str, Any], x: np.ndarray, anchor: np.ndarray | None = None) -> np.ndarray:
    """Model-unit windows (scaled, stationary) back to the data's own units, as prepare saw them.

    Args:
        spec: the prepared data's spec (its scaler and stationary entries).
        anchor: the windows' real anchors (a split's ``anchor``); None for generated windows, which
            start from the training data's last level.

    Shapes:
        x: (N, T, C) → (N, T, C)
    """
    return Stationariser.from_spec(spec).inverse(Scaler.from_dict(spec["scaler"]).inverse(x), anchor)


def model_windows(spec: dict[str, Any], values: np.ndarray, window: int, stride: int) -> np.ndarray:
    """A clean series of the kept channels cut into windows in model units, as prepare cut the training data.

    Shapes:
        values: (T, C) → (N, window, C)
    """
    st = Stationariser.from_spec(spec)
    values, levels = st.series(values, names=spec["channel_names"], where="input series")
    starts = np.arange(0, max(len(values) - window + 1, 0), stride)
    x = st.windows(sliding_windows(values, window, stride), levels[starts])
    return Scaler.from_dict(spec["scaler"]).transform(x)


def sliding_windows(series: np.ndarray, window: int, stride: int) -> np.ndarray:
    """All windows of ``window`` steps, ``stride`` apart, starting at step 0.

    Shapes:
        series: (T, C) → (floor((T - window) / stride) + 1, window, C); (0, window, C) if T < window.
    """
    if len(series) < window:
        return np.empty((0, window, series.shape[1]), dtype=series.dtype)
    starts = np.arange(0, len(series) - window + 1, stride)
    return np.stack([series[s : s + window] for s in starts])


def pad_to(series: np.ndarray, length: int) -> np.ndarray:
    """NaN-pad at the end (the likelihood masks NaN targets). Shapes: (T, C) → (length, C)."""
    out = np.full((length, series.shape[1]), np.nan)
    out[: len(series)] = series
    return out


def time_split(series: np.ndarray, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Cut one long series into contiguous train | val | test spans (in time order)."""
    n = len(series)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    n_train = n - n_val - n_test
    return {"train": series[:n_train], "val": series[n_train : n_train + n_val], "test": series[n_train + n_val :]}


@dataclasses.dataclass
class SplitWindows:
    """What :func:`build_windows` makes of a raw source.

    Attributes:
        splits: per split (x (N, T, C) float32 in model units with NaN padding, y (N,), lengths (N,)).
        anchors: per split the real level (N, C) float64 each window is measured from (see
            :class:`Stationariser`; the window's first level when nothing is transformed).
        scaler, stationariser: fitted on the training split, kept channels only.
        counts: the handled cases and the kept channel indices, for the prepare metrics.
    """

    splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    anchors: dict[str, np.ndarray]
    scaler: Scaler
    stationariser: Stationariser
    counts: dict[str, Any]


def build_splits(raw: RawSeries, config: DataConfig, seed: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], Scaler, dict[str, Any]]:
    """The splits, scaler and counts of :func:`build_windows`, for callers that need no anchors."""
    w = build_windows(raw, config, seed)
    return w.splits, w.scaler, w.counts


def build_windows(raw: RawSeries, config: DataConfig, seed: int) -> SplitWindows:
    """Clean, split, stationarise, window and scale a raw source as the config says."""
    counts: dict[str, Any] = dict.fromkeys(
        ("nonfinite_values", "imputed_values", "dropped_steps", "series_all_missing",
         "short_series_dropped", "short_series_padded", "unequal_lengths_padded", "constant_channels_dropped"), 0)
    shuffled = raw.splits is None and config.split == "shuffled"
    if shuffled:  # one "train" part now; its windows are dealt out to the splits at the end
        splits = {"train": raw.many if raw.many is not None else ([raw.series], np.array([-1]))}
    elif raw.many is not None and config.split == "series":
        splits = series_split(raw.many, config.val_fraction, config.test_fraction, seed)
    elif raw.many is not None:  # each series cut in time order, the spans pooled per split
        xs, ys = raw.many
        cut = [time_split(x, config.val_fraction, config.test_fraction) for x in xs]
        splits = {s: ([c[s] for c in cut], np.asarray(ys)) for s in SPLITS}
    elif raw.splits is None and config.split == "series":
        raise SeriesDataError("data.split is series (whole series dealt to the splits), but this data set is one "
                              "series; use data.split: time or shuffled")
    elif raw.splits is None:
        parts = time_split(raw.series, config.val_fraction, config.test_fraction)
        splits = {s: ([v], np.array([-1])) for s, v in parts.items()}
    else:
        train_x, train_y = raw.splits["train"]
        order = np.random.default_rng(seed).permutation(len(train_x))
        n_val = int(round(len(train_x) * config.val_fraction))
        val_idx, tr_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        splits = {"train": ([train_x[i] for i in tr_idx], train_y[tr_idx]),
                  "val": ([train_x[i] for i in val_idx], train_y[val_idx]),
                  "test": raw.splits["test"]}

    cleaned: dict[str, tuple[list[np.ndarray], list[int]]] = {}
    for split, (xs, ys) in splits.items():
        kept, labels = [], []
        for i, (s, y) in enumerate(zip(xs, ys)):
            s = clean(np.asarray(s, dtype=np.float64), config.missing, counts, where=f"{split} series {i}")
            if s is not None and len(s):
                kept.append(s)
                labels.append(int(y))
        cleaned[split] = (kept, labels)
    if not cleaned["train"][0]:
        raise SeriesDataError("no training data left after cleaning; check data.missing and the source")

    st = Stationariser(config.transform, config.window_scaling, tuple(map(float, cleaned["train"][0][-1][-1])))
    # Each series as (stationary values, the anchor of a window starting at each step).
    stationary = {split: ([st.series(s, names=raw.channel_names, where=f"{split} series {i}") for i, s in enumerate(xs)],
                          labels) for split, (xs, labels) in cleaned.items()}
    window = config.window
    if window is None:
        lengths = [len(v) for xs, _ in stationary.values() for v, _ in xs]
        window = max(lengths)
        if min(lengths) < window and config.short_series == "reject":
            raise SeriesDataError(f"series lengths range from {min(lengths)} to {window}; "
                                  "set data.short_series to pad (masked) or drop")
    raw_windows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    width = len(raw.channel_names)
    for split, (xs, labels) in stationary.items():
        wins, ys, lens, anchors = [], [], [], []
        for i, ((v, levels), y) in enumerate(zip(xs, labels)):
            if len(v) < window:
                if config.short_series == "reject":
                    raise SeriesDataError(f"{split} series {i} has {len(v)} steps, fewer than data.window = {window}; "
                                          "set data.short_series to pad or drop")
                if config.short_series == "drop" and config.window is not None:
                    counts["short_series_dropped"] += 1
                    continue
                counts["short_series_padded" if config.window is not None else "unequal_lengths_padded"] += 1
                w, starts = pad_to(v, window)[None], np.zeros(1, dtype=np.int64)
                lens.append(len(v))
            else:
                stride = config.stride if config.window is not None else window
                w, starts = sliding_windows(v, window, stride), np.arange(0, len(v) - window + 1, stride)
                lens += [window] * len(w)
            wins.append(st.windows(w, levels[starts]))
            anchors.append(levels[starts])
            ys += [y] * len(w)
        x = np.concatenate(wins) if wins else np.empty((0, window, width))
        anchor = np.concatenate(anchors) if anchors else np.empty((0, width))
        raw_windows[split] = (x, np.asarray(ys, dtype=np.int64), np.asarray(lens, dtype=np.int64), anchor)

    # Per-window scaling changes every step, so the scaler sees the training windows; otherwise the
    # training series (each step once).
    if config.window_scaling == "first":
        fit_on = raw_windows["train"][0].reshape(-1, width)  # (N, T, C) → (N·T, C)
        fit_on = fit_on[np.isfinite(fit_on).all(1)]
    else:
        fit_on = np.concatenate([v for v, _ in stationary["train"][0]])
    scaler, constant = Scaler.fit(fit_on, config.scaling)
    channels = np.arange(len(constant))
    if constant.any():
        names = [raw.channel_names[i] for i in np.flatnonzero(constant)]
        if config.constant_channels == "reject":
            raise SeriesDataError(f"channels {names} are constant over the training split; "
                                  "set data.constant_channels to drop or keep")
        if config.constant_channels == "drop":
            channels = np.flatnonzero(~constant)
            if not len(channels):
                raise SeriesDataError("every channel is constant over the training split")
            counts["constant_channels_dropped"] = int(constant.sum())
            scaler = scaler.select(channels)
    counts["constant_channels"] = [raw.channel_names[i] for i in np.flatnonzero(constant)]
    counts["channels_kept"] = [int(i) for i in channels]

    out = {split: (scaler.transform(x[..., channels]).astype(np.float32), y, lengths, anchor[:, channels])
           for split, (x, y, lengths, anchor) in raw_windows.items()}
    if shuffled:
        out = shuffle_split(out["train"], config.val_fraction, config.test_fraction, seed)
    return SplitWindows(splits={split: parts[:3] for split, parts in out.items()},
                        anchors={split: parts[3] for split, parts in out.items()},
                        scaler=scaler, stationariser=st.select(channels), counts=counts)


def _deal(n: int, val_fraction: float, test_fraction: float, seed: int, what: str, advice: str) -> dict[str, np.ndarray]:
    """Sorted indices of ``n`` items dealt at random (seeded) to train / val / test by the fractions.

    Raises:
        SeriesDataError: a split with a fraction above 0 would get no item (``what`` names them,
            ``advice`` says what to change).
    """
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    parts = {"train": order[n_val + n_test :], "val": order[:n_val], "test": order[n_val : n_val + n_test]}
    wanted = {"val": val_fraction, "test": test_fraction, "train": 1.0}
    empty = [name for name, idx in parts.items() if wanted[name] > 0 and not len(idx)]
    if empty:
        raise SeriesDataError(f"{n} {what} leave none for {', '.join(empty)}; {advice}")
    return {name: np.sort(idx) for name, idx in parts.items()}


def series_split(many: tuple[list[np.ndarray], np.ndarray], val_fraction: float, test_fraction: float,
                 seed: int) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """Deal whole series (x list, labels) to train / val / test by the fractions, seeded (``data.split: series``).

    Raises:
        SeriesDataError: a split would get no series.
    """
    xs, ys = many
    parts = _deal(len(xs), val_fraction, test_fraction, seed, "series with data.split: series",
                  "use more series, other data.val_fraction/test_fraction, or data.split: time (each series cut in time)")
    ys = np.asarray(ys)
    return {name: ([xs[i] for i in idx], ys[idx]) for name, idx in parts.items()}


def shuffle_split(windows: tuple[np.ndarray, ...], val_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, tuple[np.ndarray, ...]]:
    """Deal shuffled windows (x, y, lengths, anchors: arrays of N rows) out to train / val / test by the
    fractions (``data.split: shuffled``).

    Raises:
        SeriesDataError: a split would get no window.
    """
    parts = _deal(len(windows[0]), val_fraction, test_fraction, seed, "windows",
                  "use a longer series, a smaller data.window or other data.val_fraction/test_fraction")
    return {name: tuple(a[idx] for a in windows) for name, idx in parts.items()}


# --- the modality --------------------------------------------------------------------------------


class WindowDataset(torch.utils.data.Dataset):
    """Windows with labels; items are (window float32 (T, C) with NaN padding, label int64).

    ``anchor`` (N, C) float64 holds the real level each window is measured from when the data were
    stationarised (None otherwise); :func:`to_real_units` needs it for these windows.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None,
                 anchor: np.ndarray | None = None):
        self.anchor = anchor
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
        self.lengths = torch.from_numpy(np.ascontiguousarray(lengths if lengths is not None else np.full(len(y), x.shape[1]), dtype=np.int64))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the prepare stage first (dvc repro prepare@timeseries)")
    return path


def windows_to_inputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder input (padding as 0) and likelihood target (padding as NaN, masked by decoders).

    Shapes:
        x: (N, T, C) → both (N, T, C)
    """
    return torch.nan_to_num(x, nan=0.0), x


class TimeSeriesData(ModalityData):
    def prepare(self, config: DataConfig, seed: int, out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
        file_counts: dict[str, Any] = {}
        rejects: list[dict[str, Any]] | None = None
        if config.source == "files":
            raw, file_counts, rejects = read_files_raw(config)
        else:
            source = DATASETS.get_or_raise(config.dataset, "data.dataset")
            if not hasattr(source, "load"):
                raise SeriesDataError(f"data.dataset {config.dataset!r} is not a time-series data set")
            raw = source.load()
        built = build_windows(raw, config, seed)
        splits, anchors, scaler, counts = built.splits, built.anchors, built.scaler, built.counts
        for split, (x, _, _) in splits.items():
            if len(x) == 0:
                raise SeriesDataError(f"the {split} split has no windows; lower data.window or the split fractions")
        rng = np.random.default_rng(seed)
        for split, limit in (("train", config.limit_train), ("test", config.limit_test)):
            keep = subset(len(splits[split][0]), limit, rng)
            splits[split] = tuple(a[keep] for a in splits[split])
            anchors[split] = anchors[split][keep]
        x_train = splits["train"][0]
        channel_names = [raw.channel_names[i] for i in counts["channels_kept"]]
        spec = {
            "dataset": config.dataset if config.source == "dataset" else None,
            "length": int(x_train.shape[1]),
            "channels": int(x_train.shape[2]),
            "channel_names": channel_names,
            "num_classes": len(raw.class_names),
            "class_names": raw.class_names,
            "scaler": scaler.to_dict(),
            "window": config.window,
            "stride": config.stride,
            # The source's channel count and the columns kept (constant ones may be dropped), so that
            # a user's CSV with the original columns maps onto the model's inputs.
            "raw_channels": len(raw.channel_names),
            "channels_kept": counts["channels_kept"],
        }
        if built.stationariser.active:
            spec["stationary"] = built.stationariser.to_dict()
        if config.source == "files":  # (a built-in set's spec stays as it was: its outputs do not change)
            spec["raw_channel_names"] = list(raw.channel_names)  # the columns `vaeflow anomaly` reads
            spec["source"] = {"path": config.path, "layout": config.layout}
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            for split, (x, y, lengths) in splits.items():
                levels = {"anchor": anchors[split]} if built.stationariser.active else {}
                np.savez(tmp / f"{split}.npz", x=x, y=y, lengths=lengths, **levels)
            (tmp / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
            (tmp / "scaler.json").write_text(json.dumps(scaler.to_dict() | {"channels": channel_names}, indent=2) + "\n")
            if rejects is not None:
                write_rejects(tmp / "rejects.csv", rejects)
        metrics = {f"n_{split}": int(len(y)) for split, (_, y, _) in splits.items()}
        metrics |= {k: v for k, v in counts.items() if k != "channels_kept"}
        metrics["rejected"] = int(counts["series_all_missing"] + counts["short_series_dropped"])
        return metrics | file_counts

    def load(self, processed_dir: Path, split: str) -> WindowDataset:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        with np.load(_require(Path(processed_dir) / f"{split}.npz")) as f:
            return WindowDataset(f["x"], f["y"], f["lengths"], f["anchor"] if "anchor" in f else None)

    def input_spec(self, processed_dir: Path) -> dict[str, Any]:
        return json.loads(_require(Path(processed_dir) / "spec.json").read_text())

    def model_inputs(self, batch: Any, config: DataConfig, *, train: bool, generator: torch.Generator | None) -> ModelInputs:
        windows, labels = batch
        x, target = windows_to_inputs(windows.float())
        return ModelInputs(x=x, target=target, labels=labels)

    def example_input(self, dataset: WindowDataset, n: int) -> np.ndarray:
        return torch.nan_to_num(dataset.x[:n]).numpy()  # (n, T, C) float32, scaled units

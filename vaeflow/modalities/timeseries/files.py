"""Your own series (``data.source: files``): CSV/TSV(.gz)/Parquet in a wide or a long layout.

- **wide**: one row per time step, one column per channel, an optional time column: one series.
- **long**: one row per (series id, time step), the value columns, an optional label column (one
  label per series): several series in one file.

The file is read in batches (``vaeflow.tables.Table``), kept as float64 columns plus the time,
series code and file line of each row, then grouped per series, sorted by time and checked for
duplicated timestamps and gaps on the sampling grid (``data.frequency``, or the median step).
Records that cannot be placed in a series (ragged rows, unparsable or empty timestamps or ids,
duplicated timestamps, a series with two labels) are kept out and listed in ``rejects.csv``;
values that are not numbers become missing values for ``data.missing``; every case is counted.
With ``data.missing: reject`` the first problem of any kind stops prepare, naming the file and line.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from vaeflow.modalities.timeseries.config import TimeSeriesDataConfig as DataConfig
from vaeflow.modalities.timeseries.errors import SeriesDataError
from vaeflow.tables import LINE, Table, TableError, numeric

REJECT_FIELDS = ("line", "series", "column", "value", "reason", "action")
# Tokens that mean "no value" (a missing value for data.missing), not a bad record.
MISSING_TOKENS = frozenset({"", "nan", "na", "n/a", "null", "none"})
# A gap may insert at most this many steps per step read before we ask for data.frequency.
MAX_FILL_RATIO = 10


@dataclasses.dataclass
class FileSeries:
    """The series of one file, each in time order, before cleaning and splitting.

    Attributes:
        channel_names: the value columns.
        ids: one id per series (the series column's value; the file name for a wide file).
        series: per series a (T_i, C) float64 array, NaN where a value is missing (gap steps included).
        times: per series its (T_i,) times (int64 ns for dates, float64 for numbers), or None
            without a time column.
        lines: per series the file line of each step (0 for steps inserted into a gap).
        labels: per series its label (the label column's text), or None without a label column.
        counts: what was found and done, for the prepare metrics.
        rejects: rows of ``rejects.csv`` (``REJECT_FIELDS``).
    """

    channel_names: list[str]
    ids: list[str]
    series: list[np.ndarray]
    times: list[np.ndarray | None]
    lines: list[np.ndarray]
    labels: list[str] | None
    counts: dict[str, Any]
    rejects: list[dict[str, Any]]


def _counts() -> dict[str, Any]:
    return dict.fromkeys(("rows_read", "bad_records", "ragged_rows", "unparsable_times", "empty_series_ids",
                          "duplicate_times", "unsorted_rows", "non_numeric_values", "series_read",
                          "series_label_conflicts", "gaps", "gap_steps", "gap_steps_imputed", "irregular_steps"), 0)


class _Reader:
    """Accumulates one file's batches as columns; ``finish`` groups them into series."""

    def __init__(self, path: Path, config: DataConfig, channels: list[str] | None):
        self.path, self.config = path, config
        c = config
        special = [x for x in (c.time_column, c.series_column, c.label_column) if x]
        wanted = list(c.value_columns or channels or [])
        self.table = Table(path, delimiter=c.delimiter, required=[*special, *wanted],
                           columns=[*special, *wanted] if wanted else None)
        self.names = wanted or [h for h in self.table.header if h not in special]
        if not self.names:
            raise TableError(f"{path}: no value columns besides {special}; add channel columns or set data.value_columns")
        self.counts = _counts()
        self.rejects: list[dict[str, Any]] = []
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in ("values", "time", "sid", "label", "line")}
        self.ids: dict[str, int] = {}
        self.label_ids: dict[str, int] = {}
        self.time_kind: str | None = None  # "datetime" or "number", fixed by the first batch with times

    # --- problems ------------------------------------------------------------------------------

    def reject(self, line: Any, reason: str, *, series: str = "", column: str = "", value: Any = "",
               action: str = "kept out") -> None:
        if self.config.missing == "reject":
            raise SeriesDataError(f"{self.path}: line {line}: {reason}; fix the file, or set data.missing to impute "
                                  "or drop to keep such records out (listed in rejects.csv)")
        self.rejects.append(dict(line=int(line) if line is not None else "", series=series, column=column,
                                 value=str(value)[:200], reason=reason, action=action))
        if action == "kept out":
            self.counts["bad_records"] += 1

    # --- batches -------------------------------------------------------------------------------

    def add(self, frame: Any, bad: list[Any]) -> None:
        c = self.config
        for b in bad:
            self.counts["ragged_rows"] += 1
            self.reject(b.line, f"ragged row: {b.reason}", value=b.text)
        n = len(frame)
        if not n:
            return
        self.counts["rows_read"] += n
        lines = frame[LINE].to_numpy(np.int64)
        keep = np.ones(n, dtype=bool)
        values = np.empty((n, len(self.names)))
        for j, name in enumerate(self.names):
            values[:, j] = self._numbers(frame[name], lines, name)
        if c.time_column:
            t, ok = self._times(frame[c.time_column])
            for i in np.flatnonzero(~ok):
                self.counts["unparsable_times"] += 1
                self.reject(lines[i], f"timestamp {frame[c.time_column].iloc[i]!r} is not a "
                            f"{'date/time' if self.time_kind == 'datetime' else 'number'}",
                            column=c.time_column, value=frame[c.time_column].iloc[i])
            keep &= ok
        else:
            t = np.zeros(n)
        if c.series_column:
            raw_ids = frame[c.series_column].astype(str).str.strip().to_numpy(object)
            empty = raw_ids == ""
            for i in np.flatnonzero(empty & keep):
                self.counts["empty_series_ids"] += 1
                self.reject(lines[i], "empty series id", column=c.series_column)
            keep &= ~empty
            sid = self._codes(raw_ids, self.ids)
        else:
            sid = np.zeros(n, dtype=np.int64)
            self.ids.setdefault(self.path.name, 0)
        if c.label_column:
            label = self._codes(frame[c.label_column].astype(str).str.strip().to_numpy(object), self.label_ids)
        else:
            label = np.zeros(n, dtype=np.int64)
        for key, part in (("values", values), ("time", t), ("sid", sid), ("label", label), ("line", lines)):
            self.parts[key].append(part[keep])

    def _numbers(self, column: Any, lines: np.ndarray, name: str) -> np.ndarray:
        if column.dtype.kind in "fiub":  # Parquet numbers: nothing to parse
            return column.to_numpy(np.float64)
        out, bad = numeric(column)
        if bad.any() and self.config.missing == "reject":
            i = int(np.flatnonzero(bad)[0])
            self.reject(lines[i], f"{column.iloc[i]!r} in column {name!r} is not a finite number "
                        f"({int(bad.sum())} such values in this block)", column=name)
        if bad.any():
            text = column.to_numpy(object)
            for i in np.flatnonzero(bad & ~np.isinf(out)):
                v = text[i]
                if isinstance(v, str) and v.strip().lower() not in MISSING_TOKENS:
                    self.counts["non_numeric_values"] += 1
                    self.reject(lines[i], f"{v!r} in column {name!r} is not a number", column=name, value=v,
                                action="imputed" if self.config.missing == "impute" else "step dropped")
        return out

    def _times(self, column: Any) -> tuple[np.ndarray, np.ndarray]:
        """Times as int64 ns (dates) or float64 (numbers), and a mask of the parsable ones."""
        import pandas as pd

        if column.dtype.kind == "M":
            column = column.astype("datetime64[ns]")
            self.time_kind = "datetime"
            ok = ~column.isna().to_numpy()
            return column.to_numpy("datetime64[ns]").view(np.int64), ok
        if column.dtype.kind in "fiu":
            self.time_kind = self.time_kind or "number"
        if self.time_kind is None:  # the first batch decides: numbers if most of its times are numbers
            as_numbers, bad = numeric(column)
            self.time_kind = "number" if (~bad).mean() >= 0.5 else "datetime"
        if self.time_kind == "number":
            out, bad = numeric(column) if column.dtype.kind not in "fiu" else (column.to_numpy(np.float64), None)
            return out, np.isfinite(out)
        fmt = self.config.time_format or "ISO8601"
        parsed = pd.to_datetime(column.astype(str).str.strip(), errors="coerce", format=fmt)
        ok = ~parsed.isna().to_numpy()
        return parsed.to_numpy("datetime64[ns]").view(np.int64), ok

    @staticmethod
    def _codes(values: np.ndarray, index: dict[str, int]) -> np.ndarray:
        import pandas as pd

        codes, uniques = pd.factorize(values)
        mapping = np.array([index.setdefault(u, len(index)) for u in uniques], dtype=np.int64)
        return mapping[codes] if len(mapping) else np.zeros(len(values), dtype=np.int64)

    # --- series ----------------------------------------------------------------------------------

    def finish(self) -> FileSeries:
        c = self.config
        cat = {k: np.concatenate(v) if v else np.empty((0, len(self.names)) if k == "values" else 0)
               for k, v in self.parts.items()}
        self.parts.clear()
        if not len(cat["line"]):
            raise TableError(f"{self.path}: no usable rows ({self.counts['rows_read']} read, "
                             f"{self.counts['bad_records']} kept out: see rejects.csv reasons by running with "
                             "data.missing: reject); check the file and the column options")
        id_names = list(self.ids)
        label_names = list(self.label_ids)
        order = np.argsort(cat["sid"], kind="stable")  # per series, in file order
        sid_sorted = cat["sid"][order]
        bounds = np.flatnonzero(np.diff(sid_sorted)) + 1
        out = FileSeries(self.names, [], [], [], [], [] if c.label_column else None, self.counts, self.rejects)
        intervals = []
        for idx in np.split(order, bounds):
            sid = int(cat["sid"][idx[0]])
            name = id_names[sid]
            lines, values = cat["line"][idx], cat["values"][idx]
            if c.label_column:
                labels = np.unique(cat["label"][idx])
                if len(labels) > 1:
                    self.counts["series_label_conflicts"] += 1
                    shown = sorted(label_names[i] for i in labels)
                    for line in lines:
                        self.reject(line, f"series {name!r} has {len(labels)} labels {shown}; a series takes one",
                                    series=name, column=c.label_column)
                    continue
            times = None
            if c.time_column:
                t = cat["time"][idx]
                self.counts["unsorted_rows"] += int((t[1:] < np.maximum.accumulate(t)[:-1]).sum())
                s = np.argsort(t, kind="stable")
                t, lines, values = t[s], lines[s], values[s]
                dup = np.flatnonzero(t[1:] == t[:-1]) + 1
                if len(dup):
                    first = lines[np.searchsorted(t, t[dup])]  # the earlier line with that time (stable sort)
                    for i, f in zip(dup, first):
                        self.counts["duplicate_times"] += 1
                        self.reject(lines[i], f"duplicate timestamp (line {f} has the same one; the first is kept)",
                                    series=name, column=c.time_column, value=self._show(t[i]))
                    keep = np.ones(len(t), dtype=bool)
                    keep[dup] = False
                    t, lines, values = t[keep], lines[keep], values[keep]
                t, lines, values, interval = self._gaps(name, t, lines, values)
                if interval is not None:
                    intervals.append(interval)
                times = t
            out.ids.append(name)
            out.series.append(values)
            out.times.append(times)
            out.lines.append(lines)
            if out.labels is not None:
                out.labels.append(label_names[int(cat["label"][idx[0]])])
        self.counts["series_read"] = len(out.series)
        if intervals:
            self.counts["sampling_interval"] = self._show_step(float(np.median(intervals)))
        if not out.series:
            raise SeriesDataError(f"{self.path}: every series was kept out (see the reasons in rejects.csv, or run "
                                  "with data.missing: reject to see the first); fix the file")
        return out

    def _show(self, t: Any) -> str:
        import pandas as pd

        return str(pd.Timestamp(int(t))) if self.time_kind == "datetime" else f"{t:g}"

    def _show_step(self, step: float) -> str | float:
        import pandas as pd

        return str(pd.Timedelta(int(step))) if self.time_kind == "datetime" else step

    def _gaps(self, name: str, t: np.ndarray, lines: np.ndarray, values: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
        """Count (and under impute, fill with NaN steps) the steps missing from the sampling grid.

        Shapes:
            t, lines: (T,); values: (T, C) → the same with T + inserted steps.
        """
        import pandas as pd

        c = self.config
        if len(t) < 2:
            return t, lines, values, None
        freq = c.frequency
        if isinstance(freq, str):
            if self.time_kind != "datetime":
                raise SeriesDataError(f"{self.path}: data.frequency {freq!r} is a calendar frequency but the time "
                                      f"column {c.time_column!r} holds numbers; give a number or null")
            try:
                grid = pd.date_range(pd.Timestamp(int(t[0])), pd.Timestamp(int(t[-1])), freq=freq, unit="ns").asi8
            except ValueError as exc:
                raise SeriesDataError(f"{self.path}: data.frequency {freq!r} is not a pandas frequency ({exc}); "
                                      "use e.g. 'D', 'B', 'h' or '15min'") from None
            on_grid = np.isin(t, grid)
            missing = grid[~np.isin(grid, t)]
            step = float(np.median(np.diff(grid))) if len(grid) > 1 else None
            present = np.searchsorted(grid, t[on_grid])
        else:
            step = float(freq if freq is not None else np.median(np.diff(t)))
            if freq is not None and self.time_kind == "datetime":
                raise SeriesDataError(f"{self.path}: the time column {c.time_column!r} holds dates; give "
                                      f"data.frequency as a pandas frequency such as 'D' or '1h', not {freq}")
            k = (t - t[0]) / step
            on_grid = np.abs(k - np.round(k)) < 1e-6
            present = np.round(k[on_grid]).astype(np.int64)
            n_grid = int(present[-1]) + 1 if len(present) else 1
            if n_grid > MAX_FILL_RATIO * len(t) + 1000:
                raise SeriesDataError(f"{self.path}: series {name!r}: a step of {self._show_step(step)} would make "
                                      f"{n_grid} steps from {len(t)} rows; set data.frequency to its sampling interval")
            missing_k = np.setdiff1d(np.arange(n_grid), present)
            missing = t[0] + missing_k * (np.int64(step) if self.time_kind == "datetime" else step)
            if self.time_kind == "datetime":
                missing = missing.astype(np.int64)
        irregular = int((~on_grid).sum())
        self.counts["irregular_steps"] += irregular
        runs = np.diff(present)
        n_gaps, n_missing = int((runs > 1).sum()), int(len(missing))
        self.counts["gaps"] += n_gaps
        self.counts["gap_steps"] += n_missing
        if (n_missing or irregular) and c.missing == "reject":
            where = self._show(missing[0]) if n_missing else self._show(t[~on_grid][0])
            what = f"{n_missing} missing steps in {n_gaps} gaps" if n_missing else f"{irregular} steps off the grid"
            raise SeriesDataError(f"{self.path}: series {name!r}: {what} (first at {where}) of its sampling interval "
                                  f"{self._show_step(step)}; set data.missing to impute (fill them) or drop (leave "
                                  "them out), or data.frequency to the true interval")
        if n_missing and c.missing == "impute":
            if len(missing) > MAX_FILL_RATIO * len(t) + 1000:
                raise SeriesDataError(f"{self.path}: series {name!r}: filling {len(missing)} missing steps into "
                                      f"{len(t)} rows; set data.frequency to its sampling interval")
            self.counts["gap_steps_imputed"] += n_missing
            all_t = np.concatenate([t, missing.astype(t.dtype)])
            s = np.argsort(all_t, kind="stable")
            filled = np.concatenate([values, np.full((len(missing), values.shape[1]), np.nan)])
            lines = np.concatenate([lines, np.zeros(len(missing), dtype=lines.dtype)])[s]
            return all_t[s], lines, filled[s], step
        return t, lines, values, step


def read_series_file(path: str | Path, config: DataConfig, *, channels: list[str] | None = None) -> FileSeries:
    """Read one user file in ``config.layout`` with ``config``'s column options.

    Args:
        path: the CSV/TSV(.gz)/Parquet file.
        config: the data section (layout, columns, time handling, ``missing``).
        channels: the value columns to read when ``data.value_columns`` is not set (a trained
            model's channels, for ``vaeflow anomaly``).

    Raises:
        TableError: the file cannot be read at all (missing, empty, wrong format, a missing column).
        SeriesDataError: what ``data.missing: reject`` rejects, or a series that cannot be used.
    """
    reader = _Reader(Path(path), config, channels)
    for frame, bad in reader.table.batches():
        reader.add(frame, bad)
    return reader.finish()


def write_rejects(path: Path, rejects: list[dict[str, Any]]) -> None:
    """``rejects.csv``: one row per record kept out or value replaced (line, series, column, value, reason, action)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=REJECT_FIELDS)
        w.writeheader()
        w.writerows(sorted(rejects, key=lambda r: (r["line"] == "", r["line"] or 0)))

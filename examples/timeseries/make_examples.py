"""Make the example files in this folder from data that ships with installed packages.

    python examples/timeseries/make_examples.py

- ``goog_daily.csv`` (wide layout, a date column): GOOG daily prices 2004-08-19 … 2008-10-10
  (1,047 trading days; open, high, low, close, volume, adj_close), matplotlib's
  ``mpl-data/sample_data/goog.npz`` (from Yahoo! Finance).
- ``goog_daily.parquet``: the same table as Parquet.
- ``basicmotions_long.csv`` (long layout: series, step, six channels, label): 24 series of the UEA
  BasicMotions set (accelerometer x/y/z and gyroscope x/y/z of a smart watch, 100 steps at 10 Hz;
  6 per activity: standing, walking, running, badminton), the first 6 of each class in the
  official training split, as bundled in aeon (``aeon.datasets.load_basic_motions``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def goog() -> pd.DataFrame:
    from matplotlib import cbook

    data = cbook.get_sample_data("goog.npz")["price_data"]  # get_sample_data opens .npz files itself
    frame = pd.DataFrame({name: data[name] for name in data.dtype.names})
    frame["date"] = pd.to_datetime(frame["date"]).dt.strftime("%Y-%m-%d")
    return frame


def basic_motions(per_class: int = 6) -> pd.DataFrame:
    from aeon.datasets import load_basic_motions

    x, y = load_basic_motions(split="train")  # (40, 6, 100), labels as strings
    channels = ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"]
    rows = []
    for label in sorted(set(y)):
        for n, i in enumerate(np.flatnonzero(y == label)[:per_class]):
            part = pd.DataFrame(np.asarray(x[i]).T, columns=channels).round(4)  # (6, 100) → (100, 6)
            part.insert(0, "step", np.arange(len(part)))
            part.insert(0, "series", f"{label.lower()}-{n + 1}")
            part["activity"] = label.lower()
            rows.append(part)
    return pd.concat(rows, ignore_index=True)


def main() -> None:
    wide = goog()
    wide.to_csv(HERE / "goog_daily.csv", index=False)
    pd.read_csv(HERE / "goog_daily.csv", parse_dates=["date"]).to_parquet(HERE / "goog_daily.parquet", index=False)
    basic_motions().to_csv(HERE / "basicmotions_long.csv", index=False)
    for p in sorted(HERE.glob("*.*")):
        print(f"{p.name}: {p.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()

"""Throughput and peak memory of ``prepare`` on a 1M-row time-series file, next to today's Stocks path.

The file: TimeGAN's Stocks series (3,685 days × 6 channels, from the data mirror or the download
cache) tiled into 272 series of a long-layout table (``series, step``, the 6 channels; 1,002,320
rows), each series scaled by its own seeded factor in [0.5, 2) so that no two are the same; written
as CSV and as Parquet. Each prepare runs in a fresh process (so that each peak is its own), with
windows of 24 steps every 24 (non-overlapping: the output holds as many values as the input) and
each series cut in time order; the Stocks path is the quick preset's (stride 1). Memory is the
process's peak RSS during prepare (``VmHWM`` of /proc/self/status, reset through
/proc/self/clear_refs just before prepare starts, so an import's transient peak does not count;
``ru_maxrss`` where that reset is refused), also shown above the RSS the process had after its
imports (Python, torch, vaeflow, pandas, pyarrow), next to the table's size as float64 values.

    python bench/prepare_timeseries_files.py                 # ~1-2 min on 2 cores, ~200 MB of temp files
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = ["Open", "High", "Low", "Close", "Adj_Close", "Volume"]


def _status_mb(key: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux: ``5`` into clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args: dict[str, Any]) -> dict[str, Any]:
    """One prepare in this process: wall seconds, peak RSS, RSS after imports."""
    from vaeflow import config as cfg
    from vaeflow import stages

    import pandas  # noqa: F401  (the readers' libraries, imported before the baseline so it holds them)
    import pyarrow.csv  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    config = cfg.load(args["preset"], overrides=args["overrides"])
    baseline = _status_mb("VmRSS")
    reset = _reset_peak()  # so that the peak below is prepare's own, not an import's
    started = time.perf_counter()
    counts = stages.prepare(config, stages.Paths.for_modality("timeseries", args["root"]), progress=False)
    seconds = time.perf_counter() - started
    peak = _status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_rss_mb": peak, "baseline_rss_mb": baseline, "peak_reset": reset,
            "rows": counts.get("rows_read", args.get("rows")), "n_train": counts["n_train"]}


def make_file(folder: Path, n_series: int, seed: int = 0) -> tuple[Path, Path, int]:
    import numpy as np
    import pandas as pd

    from vaeflow.modalities.timeseries.data import DATASETS

    stocks = DATASETS.get_or_raise("stocks").load().series  # (3685, 6)
    rng = np.random.default_rng(seed)
    factors = rng.uniform(0.5, 2.0, size=n_series)
    steps = len(stocks)
    frame = pd.DataFrame(np.concatenate([stocks * f for f in factors]).round(4), columns=CHANNELS)
    frame.insert(0, "step", np.tile(np.arange(steps), n_series))
    frame.insert(0, "series", np.repeat([f"s{i:04d}" for i in range(n_series)], steps))
    csv_path, parquet_path = folder / "stocks_long.csv", folder / "stocks_long.parquet"
    frame.to_csv(csv_path, index=False)
    frame.to_parquet(parquet_path, index=False)
    return csv_path, parquet_path, len(frame)


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         cwd=ROOT, check=False)
    if out.returncode:
        raise SystemExit(f"prepare failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", type=int, default=272, help="series of 3,685 rows (272: 1,002,320 rows)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/prepare_timeseries_files.json)")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    tiny = str(ROOT / "configs/timeseries/quick.yaml")
    with tempfile.TemporaryDirectory(prefix="vaeflow-bench-") as tmp:
        tmp = Path(tmp)
        csv_path, parquet_path, rows = make_file(tmp, args.series)
        files = ["data.source=files", "data.layout=long", "data.series_column=series", "data.time_column=step",
                 "data.window=24", "data.stride=24", "data.split=time"]
        cases = {
            "stocks (quick preset, built-in)": {"preset": tiny, "overrides": [], "rows": 3685},
            "long CSV, 1M rows": {"preset": tiny, "overrides": [*files, f"data.path={csv_path}"], "rows": rows},
            "long Parquet, 1M rows": {"preset": tiny, "overrides": [*files, f"data.path={parquet_path}"], "rows": rows},
        }
        results = {}
        for name, spec in cases.items():
            results[name] = run_child(spec | {"root": str(tmp / name.split()[1])}) | {
                "file_mb": (csv_path if "CSV" in name else parquet_path).stat().st_size / 2**20 if "1M" in name else None}
    data_mb = rows * len(CHANNELS) * 8 / 2**20
    base = results["stocks (quick preset, built-in)"]
    table = []
    for name, r in results.items():
        rps = r["rows"] / r["seconds"]
        table.append({"case": name, "rows": r["rows"], "file_mb": r["file_mb"], "seconds": r["seconds"], "rows_per_s": rps,
                      "throughput_vs_stocks": rps / (base["rows"] / base["seconds"]),
                      "peak_rss_mb": r["peak_rss_mb"], "above_imports_mb": r["peak_rss_mb"] - r["baseline_rss_mb"],
                      "peak_vs_stocks": r["peak_rss_mb"] / base["peak_rss_mb"],
                      "above_imports_vs_float64_table": (r["peak_rss_mb"] - r["baseline_rss_mb"]) / data_mb
                      if "1M" in name else None})
    print_table(table, f"prepare: {rows:,} rows × {len(CHANNELS)} channels ({data_mb:.0f} MB as float64) vs the "
                       "Stocks quick preset; peak RSS per fresh process")
    record = {"rows": rows, "series": args.series, "float64_table_mb": data_mb,
              "memory": "peak RSS during prepare (VmHWM after a clear_refs reset; ru_maxrss if refused)",
              "rows_table": table}
    write_json("prepare_timeseries_files", record, args.out)
    return record


if __name__ == "__main__":
    main()

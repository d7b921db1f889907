"""prepare on your own file vs the MOSES path, same molecule count, side by side in one run.

    python bench/prepare_molecule_files.py --n 1000000     # the million-SMILES case (long on 2 cores)
    python bench/prepare_molecule_files.py --n 100000

Writes a CSV of the first N MOSES training SMILES (``smiles,id,pIC50``, the value made up) and runs
``vaeflow prepare`` on it (``data.source: files``: 80/10/10 seeded split, standardisation on, a
property column, the test split's reference statistics) and on MOSES itself with the same count
(``limit_train`` 0.8 N, ``val_size`` 0.1 N, ``limit_test`` 0.05 N for each of test and scaffold
test), each in a fresh process. Reports throughput (molecules read per second of wall time) and the
peak PSS of the process tree (the stage plus its featurising pool, sampled every 0.5 s with psutil;
PSS counts pages shared by the forked workers once) with the second it came at, the PSS every 30 s,
the 1-minute load average during each run (min, mean, max), and their ratios.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("files", "moses")


def make_csv(path: Path, n: int) -> None:
    from vaeflow.modalities.molecule import chem

    with gzip.open(chem.molsets_data_dir() / "train.csv.gz", "rt") as f, open(path, "w", newline="") as out:
        column = next(f).rstrip("\n").split(",").index("SMILES")
        w = csv.writer(out)
        w.writerow(["smiles", "id", "pIC50"])
        for i, line in enumerate(f):
            if i == n:
                break
            w.writerow([line.rstrip("\n").split(",")[column], f"m{i}", f"{5 + (i % 400) / 100:.2f}"])


def run(argv: list[str], root: Path) -> dict[str, float]:
    """One ``vaeflow prepare`` in a fresh process: wall time, peak PSS of its process tree (MB)."""
    proc = subprocess.Popen([sys.executable, "-m", "vaeflow.cli", "prepare", "--modality", "molecule",
                             "--root", str(root), "--no-progress", *argv], stdout=subprocess.PIPE, cwd=ROOT)
    peak, peak_at = 0.0, 0.0
    timeline: list[tuple[float, float]] = []  # (seconds, PSS MB) every 30 s: how memory grows over the run
    loads: list[float] = []  # the 1-minute load average at each sample (the cores are shared)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, peak_at
        top = psutil.Process(proc.pid)
        while not done.is_set():
            loads.append(os.getloadavg()[0])
            try:
                procs = [top, *top.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_full_info().pss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
                now = time.perf_counter() - start
                if total / 2**20 > peak:
                    peak, peak_at = total / 2**20, now
                if not timeline or now - timeline[-1][0] >= 30:
                    timeline.append((round(now, 1), round(total / 2**20, 1)))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.5)

    start = time.perf_counter()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"prepare failed ({proc.returncode}): {' '.join(argv)}")
    counts = json.loads(out)
    return {"wall_s": wall, "peak_pss_mb": peak, "peak_at_s": round(peak_at, 1), "counts": counts,
            "pss_timeline_s_mb": timeline,
            "load_avg": [round(min(loads), 2), round(sum(loads) / len(loads), 2), round(max(loads), 2)] if loads else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="molecules (default: 1,000,000)")
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS),
                   help="which paths to run (default: both; one alone reports no ratio)")
    p.add_argument("--out", help="JSON record (default: bench/results/prepare_molecule_files.json)")
    args = p.parse_args()
    n = args.n
    with tempfile.TemporaryDirectory(prefix="vaeflow-bench-") as tmp:
        tmp = Path(tmp)
        csv_path = tmp / "mols.csv"
        t0 = time.perf_counter()
        make_csv(csv_path, n)
        print(f"wrote {n:,} SMILES ({csv_path.stat().st_size / 2**20:.1f} MB) in {time.perf_counter() - t0:.1f} s")
        results = {}
        if "files" in args.paths:
            preset = ["--preset", str(ROOT / "configs/molecule/files.yaml")]
            results["files"] = run([*preset, "--set", f"data.path={csv_path}", "--set", "data.id_column=id"],
                                   tmp / "files")
        if "moses" in args.paths:
            results["moses"] = run(["--preset", str(ROOT / "configs/molecule/quick.yaml"),
                                    "--set", f"data.limit_train={int(0.8 * n)}", "--set", f"data.val_size={int(0.1 * n)}",
                                    "--set", f"data.limit_test={int(0.05 * n)}"], tmp / "moses")
    rows = []
    for key, name in (("files", "your file (CSV)"), ("moses", "MOSES path")):
        if key not in results:
            continue
        r = results[key]
        c = r["counts"]
        kept = sum(v for k, v in c.items() if k.startswith("n_"))
        read = kept + c["rejected"] + c.get("duplicates", 0)
        rows.append({"path": name, "molecules": read, "kept": kept, "wall_s": round(r["wall_s"], 1),
                     "mol_per_s": round(read / r["wall_s"], 1), "peak_pss_mb": round(r["peak_pss_mb"], 1),
                     "peak_at_s": r["peak_at_s"],
                     "pss_kb_per_mol": round(1024 * r["peak_pss_mb"] / read, 2),
                     "load_avg_min_mean_max": r["load_avg"], "pss_timeline_s_mb": r["pss_timeline_s_mb"]})
    ratio = {}
    if len(rows) == 2:
        ratio = {"throughput_files_over_moses": rows[0]["mol_per_s"] / rows[1]["mol_per_s"],
                 "peak_pss_files_over_moses": rows[0]["peak_pss_mb"] / rows[1]["peak_pss_mb"]}
    print_table([{k: v for k, v in row.items() if k != "pss_timeline_s_mb"} for row in rows],
                f"prepare, {n:,} molecules: your file vs the MOSES path")
    print(json.dumps({k: round(v, 3) for k, v in ratio.items()}))
    path = write_json("prepare_molecule_files", {"n": n, "rows": rows, "ratios": ratio,
                                                 "counts": {k: r["counts"] for k, r in results.items()}}, args.out)
    print(f"→ {path}")


if __name__ == "__main__":
    main()

"""Peak memory of the FCD statistics of N molecules: fcd_torch's own ``precalc`` against vaeflow's
``fcd_statistics`` (the same ChemNet, one ``get_predictions`` call per batch of ``metrics.FCD_BATCH``,
folded into running sums), side by side.

Each measurement runs in a fresh process (peak RSS is a per-process high-water mark), on the first N
molecules of MOSES's test set, the two implementations alternating in order from one size to the
next; the table gives peak RSS, wall time and the largest difference between their mu and sigma
(about 1e-7: fcd_torch averages in float32, vaeflow sums in float64). The evaluate stage computes these statistics for every
sample set: 30,000 molecules in the MOSES protocol.

    python bench/fcd_memory.py                     # 1k, 10k and 30k molecules
    python bench/fcd_memory.py --sizes 2000 --out /tmp/fcd.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/fcd_memory.py`: the repository root holds `bench`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench._common import print_table, write_json  # noqa: E402
from vaeflow.modalities.molecule import chem  # noqa: E402
from vaeflow.modalities.molecule import metrics as M  # noqa: E402

IMPLEMENTATIONS = ("fcd_torch", "vaeflow")
FCD_TORCH_BATCH = 512  # fcd_torch.FCD's default batch_size


def _measure(impl: str, n: int, out: Path) -> None:
    """Child process: statistics of the first ``n`` MOSES test molecules; prints seconds and peak RSS."""
    import pandas as pd

    smiles = pd.read_csv(chem.molsets_data_dir() / "test.csv.gz")["SMILES"].tolist()[:n]
    t = time.perf_counter()
    # fcd_torch as its users run it (its own batch of 512), against vaeflow's defaults.
    stats = M._fcd(batch_size=FCD_TORCH_BATCH).precalc(smiles) if impl == "fcd_torch" else M.fcd_statistics(smiles)
    seconds = time.perf_counter() - t
    np.savez(out, **stats)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 30000], help="numbers of molecules")
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/fcd_memory.json)")
    p.add_argument("--child", nargs=3, metavar=("IMPL", "N", "NPZ"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        impl, n, out = args.child
        _measure(impl, int(n), Path(out))
        return
    try:
        chem.molsets_data_dir()
    except FileNotFoundError as exc:  # molsets missing: the one data source this benchmark reads
        sys.exit(f"fcd_memory: {exc}")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, n in enumerate(args.sizes):
            got = {}
            for impl in IMPLEMENTATIONS if i % 2 == 0 else IMPLEMENTATIONS[::-1]:
                npz = Path(tmp) / f"{impl}.npz"
                proc = subprocess.run([sys.executable, __file__, "--child", impl, str(n), str(npz)],
                                      capture_output=True, text=True, check=True)
                got[impl] = json.loads(proc.stdout.strip().splitlines()[-1]) | {"stats": dict(np.load(npz))}
            theirs, ours = got["fcd_torch"], got["vaeflow"]
            rows.append({
                "molecules": n,
                "fcd_torch_peak_mb": round(theirs["peak_rss_mb"]),
                "vaeflow_peak_mb": round(ours["peak_rss_mb"]),
                "peak_ratio": ours["peak_rss_mb"] / theirs["peak_rss_mb"],
                "fcd_torch_s": theirs["seconds"],
                "vaeflow_s": ours["seconds"],
                "max_abs_diff": max(float(np.abs(ours["stats"][k] - theirs["stats"][k]).max()) for k in ("mu", "sigma")),
            })
    print_table(rows, "FCD statistics: peak RSS and time per process, fcd_torch precalc vs vaeflow fcd_statistics")
    write_json("fcd_memory", {"rows": rows}, args.out)


if __name__ == "__main__":
    main()

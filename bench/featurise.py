"""Featurisation throughput: SMILES → graph (and all prepare stores) per core, against RDKit's bare parse.

Goal: SMILES → graph (parse + ``vaeflow.modalities.molecule.data.graph_features``) keeps at least 0.5× the rate
of a bare ``Chem.MolFromSmiles`` per core. Also measured: the whole per-record work of the prepare
stage (``featurise_chunk``: graph + canonical SMILES + SELFIES + logP/QED/SA/weight), and the
scaling of prepare's process pool in processes (goal: near-linear).

Protocol:
  1. N SMILES of MOSES train, chosen as the molecule preset's prepare chooses its training split
     (``plan_splits`` with ``data.limit_train = N`` and the preset's seed) and cut into prepare's
     2,000-record chunks by its reader (``_stream``), all read before any clock starts;
  2. each repeat, on the same chunks: (a) ``Chem.MolFromSmiles`` on every SMILES (parse + sanitise,
     this process); (a') parse + ``graph_features``; (b) ``featurise_chunk`` on every chunk (this
     process); (c) the same chunks
     through prepare's local parallel path, a fork ``Pool`` mapping ``featurise_chunk`` over the
     chunks in order (as ``_map_pool`` does, but sized here: k = 1, 2, 4 … up to the usable cores).
     The order of (a), (b), (c) is reversed every other repeat, so slow drift of the shared machine
     falls on both sides of every ratio;
     The pools run on the first ``--scaling-n`` SMILES (12,000 = 6 chunks, which split evenly over
     1, 2, 3 or 6 processes; a pool's scaling does not depend on N beyond that balance);
  3. medians over repeats: featurise/parse rate ratio (per repeat, then the median), pool rate per
     core, speed-up over the 1-process pool and efficiency (speed-up / k). Each is given in wall time
     and in CPU time (this process + its workers): on a shared, oversubscribed machine the CPU rate
     is what one core does, and ``cores_used`` = CPU / wall says how much of the machine a run got;
  4. cProfile of ``featurise_chunk`` on the first ``--profile-n`` SMILES: the share of
     ``featurise``'s time spent in each function it calls (profiling inflates pure-Python parts a
     little; the shares are for finding the hot spot, not for the rates).
  Optional ``--full-moses``: the real prepare stage (``MoleculeData().prepare``, the preset's data
  config without the training limit) on all 1.58 M MOSES training SMILES into a temporary folder
  (``$TMPDIR``), reporting its wall time and peak memory: the process tree's RSS sampled every 0.2 s
  with psutil (shared copy-on-write pages of forked workers are counted once per process, so this
  overstates), and ``ru_maxrss`` of this process and of its largest child. At ~400 molecules/s per
  core that is ~35 minutes on 2 idle cores.

    python bench/featurise.py                      # N = 50,000 (the quick preset's limit), 3 repeats
    python bench/featurise.py --n 5000 --repeats 5
    python bench/featurise.py --full-moses         # also the full prepare stage (~35 min on 2 cores)
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import functools
import multiprocessing as mp
import os
import pstats
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/featurise.py`: the repository root holds `bench`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import Clock, TreeMonitor, median, print_table, write_json  # noqa: E402
from vaeflow.modalities.molecule import chem  # noqa: E402
from vaeflow import config as cfg  # noqa: E402
from vaeflow.modalities.molecule import data as mol  # noqa: E402
from vaeflow.registry import DATASETS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs/molecule/quick.yaml"
CHUNK_SIZE = 2000  # prepare's default chunk size
GOAL_RATIO = 0.5  # SMILES → graph rate per core / parse rate per core

Chunks = list[list[tuple[int, str]]]


def moses_chunks(config: cfg.ExperimentConfig, n: int) -> tuple[mol.MoleculeSource, Chunks]:
    """The training records prepare picks with ``data.limit_train = n``, cut into its chunks.

    Raises:
        FileNotFoundError: molsets (which ships the MOSES files) is not installed.
    """
    source: mol.MoleculeSource = DATASETS.get_or_raise(config.data.dataset, "data.dataset")
    plan = mol.plan_splits(source, dataclasses.replace(config.data, limit_train=n), config.seed)
    path, keep = plan["train"]
    return source, list(mol._stream(path, keep, CHUNK_SIZE))


def time_parse(chunks: Chunks) -> Clock:
    """``Chem.MolFromSmiles`` (parse + sanitise) on every SMILES, in this process."""
    from rdkit import Chem

    chem.quiet_rdkit()
    with Clock() as clock:
        for chunk in chunks:
            for _, smiles in chunk:
                Chem.MolFromSmiles(smiles)
    return clock


def time_graph(chunks: Chunks, source: mol.MoleculeSource) -> Clock:
    """SMILES → graph alone: parse + ``graph_features`` (atom/bond features, edges), this process."""
    chem.quiet_rdkit()
    with Clock() as clock:
        for chunk in chunks:
            for _, smiles in chunk:
                mol.graph_features(chem.mol_from_smiles(smiles), source.elements)
    return clock


def time_floor(chunks: Chunks) -> Clock:
    """Parse + only the RDKit reads ``graph_features`` needs (6 per atom, 5 per bond), kept raw.

    No lookups, no validation, no arrays: what any featuriser that reads these features through
    RDKit's Python API pays at least, so ``rate(floor) / rate(parse)`` bounds the graph ratio from above.
    """
    from rdkit import Chem

    chem.quiet_rdkit()
    with Clock() as clock:
        for chunk in chunks:
            for _, smiles in chunk:
                m = Chem.MolFromSmiles(smiles)
                [(a.GetSymbol(), a.GetFormalCharge(), a.GetIsAromatic(), a.GetTotalNumHs(), a.GetHybridization(),
                  a.IsInRing()) for a in m.GetAtoms()]
                [(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), b.GetBondType(), b.GetIsConjugated(), b.IsInRing())
                 for b in m.GetBonds()]
    return clock


def time_featurise(chunks: Chunks, source: mol.MoleculeSource) -> Clock:
    """``featurise_chunk`` on every chunk, in this process."""
    with Clock() as clock:
        for chunk in chunks:
            mol.featurise_chunk(chunk, source.elements, source.max_atoms)
    return clock


def time_pool(chunks: Chunks, source: mol.MoleculeSource, processes: int) -> Clock:
    """Prepare's process pool with ``processes`` workers over every chunk.

    The pool is ``_map_pool``'s (fork context, ``imap`` over ``featurise_chunk`` in chunk order);
    ``_map_pool`` itself always starts one worker per usable core, so it cannot be sized here.
    """
    fn = functools.partial(mol.featurise_chunk, elements=tuple(source.elements), max_atoms=source.max_atoms)
    with Clock() as clock, mp.get_context("fork").Pool(processes) as pool:
        for _ in pool.imap(fn, chunks):
            pass
    return clock


def process_counts(requested: Sequence[int] | None) -> list[int]:
    """Pool sizes to measure: 1, 2, 4 … and the number of usable cores (or ``requested``)."""
    usable = chem.cpu_count()
    if requested:
        too_many = [k for k in requested if not 1 <= k <= usable]
        if too_many:
            raise SystemExit(f"--processes {too_many} outside 1..{usable} (the usable cores)")
        return sorted(set(requested))
    counts, k = [], 1
    while k < usable:
        counts.append(k)
        k *= 2
    return counts + [usable]


def profile_featurise(chunks: Chunks, source: mol.MoleculeSource, n: int) -> list[dict[str, Any]]:
    """Share of ``featurise``'s time in each function it calls directly (and in its own body),
    with one more level under ``chem.properties``, from cProfile on the first ``n`` SMILES."""
    records = [r for chunk in chunks for r in chunk][:n]
    profiler = cProfile.Profile()
    profiler.runcall(mol.featurise_chunk, records, source.elements, source.max_atoms)
    stats = pstats.Stats(profiler).stats  # (file, line, name) → (cc, nc, tottime, cumtime, callers)

    def find(func: Any) -> tuple[str, int, str]:
        code = func.__code__
        return next(k for k in stats if k[2] == code.co_name and k[0] == code.co_filename and k[1] == code.co_firstlineno)

    def label(key: tuple[str, int, str]) -> str:
        file, _, name = key
        if file == "~":  # a C function: cProfile names it "<built-in method rdkit...MolToSmiles>"
            return name.strip("<>").replace("built-in method ", "")
        return f"{Path(file).parent.name}/{Path(file).name}:{name}"

    def callees(parent: tuple[str, int, str]) -> list[tuple[tuple[str, int, str], float]]:
        out = [(k, v[4][parent][3]) for k, v in stats.items() if parent in v[4]]
        return sorted(out, key=lambda kv: -kv[1])

    top = find(mol.featurise)
    props = find(chem.properties)
    total = stats[top][3]
    rows = [{"function": "featurise (own lines: atom/bond loops, arrays)", "share": stats[top][2] / total,
             "ms_per_mol": 1e3 * stats[top][2] / len(records)}]
    for key, seconds in callees(top):
        rows.append({"function": label(key), "share": seconds / total, "ms_per_mol": 1e3 * seconds / len(records)})
        if key == props:
            for sub, sub_seconds in callees(props):
                rows.append({"function": f"  └ {label(sub)}", "share": sub_seconds / total,
                             "ms_per_mol": 1e3 * sub_seconds / len(records)})
    return [r for r in rows if r["share"] >= 0.005]


def _maxrss_mib(who: int) -> float:
    kib = resource.getrusage(who).ru_maxrss
    return kib / 2**20 if sys.platform == "darwin" else kib / 2**10  # bytes on macOS, KiB on Linux


def full_prepare(config: cfg.ExperimentConfig) -> dict[str, Any]:
    """The real prepare stage on all of MOSES train: wall time, peak memory and its counts."""
    data = dataclasses.replace(config.data, limit_train=None)
    with tempfile.TemporaryDirectory(prefix="vaeflow-bench-") as tmp, TreeMonitor() as peak:
        started = time.perf_counter()
        counts = mol.MoleculeData().prepare(data, config.seed, Path(tmp) / "molecule", progress=True)
        wall = time.perf_counter() - started
    return {"wall_s": wall, "peak_rss_tree_mib": peak.peak_tree / 2**20, "ru_maxrss_self_mib": _maxrss_mib(resource.RUSAGE_SELF),
            "ru_maxrss_children_mib": _maxrss_mib(resource.RUSAGE_CHILDREN), "workers": chem.cpu_count(),
            "train_per_s": counts["n_train"] / wall, "counts": counts}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50_000, help="MOSES training SMILES to time (default: the quick preset's limit)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scaling-n", type=int, default=12_000,
                   help="SMILES (the first ones) for the pool runs: 6 chunks split evenly over 1, 2, 3 or 6 processes")
    p.add_argument("--processes", type=lambda s: [int(k) for k in s.split(",")], default=None,
                   help="pool sizes, comma-separated (default: 1, 2, 4 … and all usable cores)")
    p.add_argument("--profile-n", type=int, default=2000, help="SMILES to profile (0: no profile)")
    p.add_argument("--preset", default=str(PRESET), help="molecule preset whose data config picks the SMILES")
    p.add_argument("--full-moses", action="store_true", help="also run the real prepare stage on all of MOSES (~35 min on 2 cores)")
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/featurise.json)")
    args = p.parse_args(argv)

    config = cfg.load(args.preset)
    try:
        source, chunks = moses_chunks(config, args.n)
    except FileNotFoundError as exc:
        raise SystemExit(f"featurise benchmark: {exc}") from None
    load_before = os.getloadavg()
    n = sum(len(c) for c in chunks)
    counts = process_counts(args.processes)
    pool_chunks = chunks[: max(1, -(-args.scaling_n // CHUNK_SIZE))]
    n_pool = sum(len(c) for c in pool_chunks)
    print(f"{n} MOSES SMILES in {len(chunks)} chunks ({n_pool} for the pools); {args.repeats} repeats; "
          f"pool sizes {counts}", flush=True)

    runs: list[dict[str, Any]] = []  # per repeat: step → {"wall": s, "cpu": s}
    for r in range(args.repeats):
        steps = [("parse", lambda: time_parse(chunks)), ("floor", lambda: time_floor(chunks)),
                 ("graph", lambda: time_graph(chunks, source)),
                 ("featurise", lambda: time_featurise(chunks, source))]
        steps += [(f"pool_{k}", lambda k=k: time_pool(pool_chunks, source, k)) for k in counts]
        clocks = {name: fn() for name, fn in (steps if r % 2 == 0 else steps[::-1])}
        runs.append({name: {"n": n if name in ("parse", "floor", "graph", "featurise") else n_pool, "wall": c.wall, "cpu": c.cpu}
                     for name, c in clocks.items()})
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v['n'] / v['wall']:.0f}/s" for k, v in runs[-1].items()),
              flush=True)

    def rate(step: str, clock: str = "wall") -> float:
        return median([run[step]["n"] / run[step][clock] for run in runs])

    def paired(num: str, den: str, clock: str = "wall") -> float:  # rate(num) / rate(den) within each repeat
        return median([(run[num]["n"] / run[num][clock]) / (run[den]["n"] / run[den][clock]) for run in runs])

    parse, graph, feat = rate("parse"), rate("graph"), rate("featurise")
    graph_ratio, graph_ratio_cpu = paired("graph", "parse"), paired("graph", "parse", "cpu")
    floor_ratio = paired("floor", "parse")
    ratio, ratio_cpu = paired("featurise", "parse"), paired("featurise", "parse", "cpu")
    scaling = []
    for k in counts:
        step = f"pool_{k}"
        speedup = paired(step, "pool_1") if 1 in counts else None
        scaling.append({"processes": k, "per_s": rate(step), "per_core_per_s": rate(step) / k,
                        "per_cpu_s": rate(step, "cpu"), "cores_used": median([run[step]["cpu"] / run[step]["wall"] for run in runs]),
                        "vs_in_process": paired(step, "featurise"), "speedup": speedup,
                        "efficiency": None if speedup is None else speedup / k})

    rows = [
        {"path": "Chem.MolFromSmiles (parse + sanitise)", "processes": 1, "mol_per_s": parse,
         "per_core_vs_parse": 1.0, "mol_per_cpu_s": rate("parse", "cpu"), "cpu_vs_parse": 1.0},
        {"path": "parse + raw RDKit reads only (the floor)", "processes": 1, "mol_per_s": rate("floor"),
         "per_core_vs_parse": floor_ratio, "mol_per_cpu_s": rate("floor", "cpu"), "cpu_vs_parse": paired("floor", "parse", "cpu")},
        {"path": "SMILES → graph (parse + graph_features)", "processes": 1, "mol_per_s": graph,
         "per_core_vs_parse": graph_ratio, "mol_per_cpu_s": rate("graph", "cpu"), "cpu_vs_parse": graph_ratio_cpu},
        {"path": "featurise_chunk (graph + SELFIES + properties)", "processes": 1, "mol_per_s": feat, "per_core_vs_parse": ratio,
         "mol_per_cpu_s": rate("featurise", "cpu"), "cpu_vs_parse": ratio_cpu},
        *({"path": "fork Pool (prepare's _map_pool)", "processes": s["processes"], "mol_per_s": s["per_s"],
           "per_core_vs_parse": s["per_core_per_s"] / parse, "mol_per_cpu_s": s["per_cpu_s"],
           "cpu_vs_parse": s["per_cpu_s"] / rate("parse", "cpu"), "cores_used": s["cores_used"],
           "speedup": "" if s["speedup"] is None else s["speedup"],
           "efficiency": "" if s["efficiency"] is None else s["efficiency"]} for s in scaling),
    ]
    print_table(rows, f"Featurisation, {n} MOSES SMILES, median of {args.repeats} (goal: featurise ≥ {GOAL_RATIO}× parse per core)")
    print(f"SMILES → graph / parse per core: {graph_ratio:.3f} wall, {graph_ratio_cpu:.3f} CPU time "
          f"({'meets' if graph_ratio >= GOAL_RATIO else 'misses'} the {GOAL_RATIO}× goal); "
          f"the raw RDKit reads alone allow at most {floor_ratio:.3f}")
    print(f"featurise (all prepare stores) / parse per core: {ratio:.3f} wall, {ratio_cpu:.3f} CPU time "
          f"({'meets' if ratio >= GOAL_RATIO else 'misses'} the {GOAL_RATIO}× goal)")

    profile = profile_featurise(chunks, source, args.profile_n) if args.profile_n > 0 else []
    if profile:
        print_table(profile, f"Where featurise's time goes (cProfile, first {min(args.profile_n, n)} SMILES)")

    full = None
    if args.full_moses:
        print("\nfull MOSES prepare (~35 minutes on 2 cores) …", flush=True)
        full = full_prepare(config)
        print_table([{k: v for k, v in full.items() if k != "counts"}], "Prepare stage on all of MOSES train")

    record = {"n": n, "n_pool": n_pool, "repeats": args.repeats, "chunk_size": CHUNK_SIZE, "preset": args.preset,
              "dataset": config.data.dataset, "elements": list(source.elements), "max_atoms": source.max_atoms,
              "parse_per_s": parse, "graph_per_s": graph, "graph_ratio": graph_ratio,
              "graph_ratio_cpu": graph_ratio_cpu, "floor_per_s": rate("floor"), "floor_ratio": floor_ratio,
              "featurise_per_s": feat, "ratio": ratio, "ratio_cpu": ratio_cpu, "goal_ratio": GOAL_RATIO,
              "meets_goal": graph_ratio >= GOAL_RATIO, "scaling": scaling, "profile": profile, "full_moses": full,
              "runs_seconds": runs,
              "loadavg_1min_before_after": [load_before[0], os.getloadavg()[0]]}
    write_json("featurise", record, args.out)
    return record


if __name__ == "__main__":
    main()

"""Ray Train overhead vs a bare PyTorch loop, and data-parallel scaling over 1 and 2 workers.

Protocol (per modality; same preset, data subset, model, seed, batch, epochs and CPU threads):
  * bare: one process, a plain ``DataLoader`` and vaeflow's plain-torch epoch function
    (``vaeflow.training.loop.run_epoch``, no Ray, no DDP), a validation pass and a ``torch.save``
    of model + optimizer state each epoch, ``torch.set_num_threads(T)``;
  * ray: vaeflow's real training path (``vaeflow.training.ray.fit``: TorchTrainer, object-store data,
    per-epoch report + checkpoint, epoch metrics to an MLflow run on a temporary SQLite file)
    with 1 worker of T CPUs.
  The two alternate (bare, ray, bare, ray …) for ``--repeats`` rounds; each figure is the median.
  Per epoch (steady state = epochs 2..n): the training pass alone (``train_s``) and the whole epoch
  (``epoch_s``: train + validation + checkpoint + report; for ray the interval between the epoch
  commits that MLflow timestamps). Start-up = job wall time − n × steady epoch. The Ray cluster's
  own start (``ray.init``, paid once per session, not per job on a running cluster) is separate.
  Scaling: ray with 1 and 2 workers of 1 CPU each (and bare with 1 thread), training examples/s
  in steady state; efficiency = throughput(2) / (2 × throughput(1)).

    python bench/overhead.py     # image (20k images) + molecule (4k molecules), 4 epochs, 2 rounds: ~25 min on 2 cores
    python bench/overhead.py --modality image --epochs 4 --train-limit 20000 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.data import DataLoader

from bench._common import median, print_table, write_json
from vaeflow import config as cfg
from vaeflow import registry, stages, tracking
from vaeflow.models.vae import build_model
from vaeflow.training import checkpoint
from vaeflow.training.loop import run_epoch, seeded_generator

ROOT = Path(__file__).resolve().parents[1]


def _config(modality: str, preset: str, work: Path, *overrides: str) -> cfg.ExperimentConfig:
    return cfg.load(ROOT / "configs" / modality / f"{preset}.yaml", overrides=[
        f"tracking.uri=sqlite:///{work}/mlflow.db", f"tracking.artifact_location={work}/mlartifacts",
        f"train.storage_path={work}/ray_results", *overrides,
    ])


def bare(config: cfg.ExperimentConfig, processed: Path, threads: int, work: Path) -> dict[str, Any]:
    """Train in this process without Ray; per-epoch times of the training pass and the whole epoch."""
    started = time.perf_counter()
    torch.set_num_threads(threads)
    modality = registry.MODALITIES.get_or_raise(config.modality).data
    train_ds, val_ds = modality.load(processed, "train"), modality.load(processed, "val")
    torch.manual_seed(config.seed)
    model = build_model(config.model, modality.input_spec(processed))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    collate = modality.collate_fn()
    order = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(train_ds, batch_size=config.train.batch_size, shuffle=True, drop_last=True,
                              generator=order, collate_fn=collate)
    val_loader = DataLoader(val_ds, batch_size=config.train.batch_size, collate_fn=collate)
    device = torch.device("cpu")
    train_s, epoch_s, last = [], [], None
    for epoch in range(config.train.epochs):
        t0 = time.perf_counter()
        last = run_epoch(model, train_loader, modality, config, epoch=epoch, device=device, optimizer=optimizer,
                         generator=seeded_generator(device, config.seed, "train", epoch))
        t1 = time.perf_counter()
        run_epoch(model, val_loader, modality, config, epoch=epoch, device=device,
                  generator=seeded_generator(device, config.seed, "val"))
        checkpoint.save(work / "bare.pt", model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch + 1)
        train_s.append(t1 - t0)
        epoch_s.append(time.perf_counter() - t0)
    return {"wall_s": time.perf_counter() - started, "train_s": train_s, "epoch_s": epoch_s,
            "examples": len(train_loader) * config.train.batch_size, "final_train_neg_elbo": last["neg_elbo"]}


def ray_fit(config: cfg.ExperimentConfig, processed: Path, name: str) -> dict[str, Any]:
    """Train through vaeflow's Ray Train path; epoch times from its history and MLflow's timestamps."""
    from vaeflow.training.ray import SCORE, fit

    run_id = tracking.start_run(config, {}, run_name=name)
    started = time.perf_counter()
    result = fit(config, processed, run_name=name, run_id=run_id, progress=False)
    wall = time.perf_counter() - started
    commits = sorted(m.timestamp for m in tracking.client(config.tracking).get_metric_history(run_id, SCORE))
    history = result.history
    return {
        "wall_s": wall,
        "train_s": [r["epoch_time_s"] for r in history],
        # Epoch 1's start has no commit before it: its whole-epoch time is not measured (None).
        "epoch_s": [None, *((b - a) / 1000 for a, b in zip(commits, commits[1:]))],
        "examples_per_s": [r["train_examples_per_s"] for r in history],
        "final_train_neg_elbo": history[-1]["train_neg_elbo"],
    }


def _steady(values: list[float], skip: int = 1) -> float:
    return median(values[skip:] or values)


def bench_modality(modality: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """The overhead and scaling rows for one modality."""
    limit = args.molecule_train_limit if modality == "molecule" else args.train_limit
    overrides = [f"train.epochs={args.epochs}", f"data.limit_train={limit}",
                 f"train.batch_size={args.batch_size}", "train.keep_checkpoints=1"]
    config = _config(modality, args.preset, work, *overrides)
    paths = stages.Paths.for_modality(modality, work)
    print(f"[{modality}] preparing {limit} training examples ({args.preset} preset)", flush=True)
    stages.prepare(config, paths, progress=False)
    T = args.threads

    def with_workers(n: int, cpus: int) -> cfg.ExperimentConfig:
        return _config(modality, args.preset, work, *overrides, f"train.num_workers={n}", f"train.cpus_per_worker={cpus}")

    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in ("bare", "ray1", "bare_t1", "ray1_c1", "ray2_c1")}
    for r in range(args.repeats):
        print(f"[{modality}] round {r + 1}/{args.repeats}: bare ({T} threads) vs Ray 1 worker × {T} CPUs", flush=True)
        runs["bare"].append(bare(config, paths.processed, T, work))
        runs["ray1"].append(ray_fit(with_workers(1, T), paths.processed, f"{modality}-ray1-{r}"))
        if args.scaling:
            print(f"[{modality}] round {r + 1}/{args.repeats}: scaling, 1 CPU per worker", flush=True)
            runs["bare_t1"].append(bare(config, paths.processed, 1, work))
            runs["ray1_c1"].append(ray_fit(with_workers(1, 1), paths.processed, f"{modality}-ray1c1-{r}"))
            runs["ray2_c1"].append(ray_fit(with_workers(2, 1), paths.processed, f"{modality}-ray2c1-{r}"))

    def agg(key: str, field: str) -> float:
        return median([_steady(run[field]) for run in runs[key]])

    def startup(key: str) -> float:
        return median([run["wall_s"] - args.epochs * _steady(run["epoch_s"]) for run in runs[key]])

    rows = [{
        "modality": modality, "comparison": f"overhead, {T} threads",
        "bare_train_s": agg("bare", "train_s"), "ray_train_s": agg("ray1", "train_s"),
        "train_ratio": agg("ray1", "train_s") / agg("bare", "train_s"),
        "bare_epoch_s": agg("bare", "epoch_s"), "ray_epoch_s": agg("ray1", "epoch_s"),
        "epoch_ratio": agg("ray1", "epoch_s") / agg("bare", "epoch_s"),
        "bare_startup_s": startup("bare"), "ray_startup_s": startup("ray1"),
        "startup_extra_s": startup("ray1") - startup("bare"),
    }]
    if args.scaling:
        bare1 = median([r["examples"] / _steady(r["train_s"]) for r in runs["bare_t1"]])
        one, two = agg("ray1_c1", "examples_per_s"), agg("ray2_c1", "examples_per_s")
        rows.append({
            "modality": modality, "comparison": "scaling, 1 CPU per worker",
            "bare_1thread_ex_s": bare1, "ray_1worker_ex_s": one, "ray_2workers_ex_s": two,
            "speedup": two / one, "efficiency": two / (2 * one),
        })
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modality", nargs="+", default=["image", "molecule"], choices=["image", "molecule", "timeseries"])
    parser.add_argument("--preset", default="quick", help="preset under configs/<modality>/ (model and data settings)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-limit", type=int, default=20000, help="training images / windows (a seeded subset)")
    parser.add_argument("--molecule-train-limit", type=int, default=4000, help="training molecules (a seeded subset)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="CPU threads (bare) = CPUs of the 1 Ray worker")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-scaling", dest="scaling", action="store_false", help="skip the 1-vs-2-worker runs")
    parser.add_argument("--out", help="JSON path (default bench/results/overhead.json)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (epoch 1 is warm-up; steady state starts at epoch 2)")

    from vaeflow.training.ray import init_ray
    import ray

    t0 = time.perf_counter()
    fresh = not ray.is_initialized()
    init_ray(num_cpus=max(2, args.threads))
    ray_init_s = time.perf_counter() - t0 if fresh else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="vaeflow-bench-") as tmp:
        for modality in args.modality:
            work = Path(tmp) / modality
            work.mkdir()
            rows += bench_modality(modality, args, work)
    print_table([r for r in rows if r["comparison"].startswith("overhead")], "Ray Train (1 worker) vs bare PyTorch, medians")
    print_table([r for r in rows if r["comparison"].startswith("scaling")], "Scaling over workers (training examples/s)")
    if ray_init_s is not None:
        print(f"\nray.init (local cluster start, once per session): {ray_init_s:.1f} s")
    record = {"settings": vars(args) | {"out": None}, "ray_init_s": ray_init_s, "rows": rows}
    write_json("overhead", record, args.out)
    return record


if __name__ == "__main__":
    main()

"""Molecule training throughput: length-bucketed batches vs today's plain shuffling, at equal quality.

Protocol (quick preset model and batch, a seeded MOSES subset, side by side in one run):
  * profile: where one bare training step's time goes (collate, GINE encoder forward + backward,
    SELFIES GRU decoder forward + backward, the whole loss's forward + backward, optimizer step),
    for today's batches and for bucketed ones, plus torch.profiler's top operators;
  * packing: the decoder's GRU alone on one rank's random batch, padded to its longest molecule,
    packed (``pack_padded_sequence``) and padded to the mean length (a bucketed batch's cost);
  * bare: one process, ``--threads`` threads, vaeflow's plain-torch epoch (``run_epoch``) over
      - ``today``: a shuffling ``DistributedSampler`` (1 replica) and PyG's plain ``Batch.from_data_list``
        (token rows as wide as the split's longest molecule: the collate of ``--baseline-rev``);
      - ``trimmed``: the same batches, token rows cut to the batch's longest (vaeflow's collate now);
      - ``bucketed``: ``train.length_buckets`` batches (``vaeflow.training.batching``);
      - ``bf16``: ``trimmed``'s batches with ``train.precision: bf16`` (torch's CPU autocast; fast
        only where the CPU has native bf16 instructions, e.g. AVX512-BF16 or AMX: the record
        names the CPU's capability);
    ``today``, ``bucketed`` and ``bf16`` train ``--epochs`` epochs for each of ``--seeds`` seeds (validation
    −ELBO after the same epochs: equal quality), ``trimmed`` two epochs per seed (its loss is today's,
    exactly). Throughput = training molecules / training-pass seconds, median of epochs 2..n;
  * ray: vaeflow's real path (``vaeflow.training.ray.fit``, 2 workers × 1 CPU as the quick preset,
    object-store data, per-epoch checkpoint and MLflow metrics) for the code at ``--baseline-rev``
    (today) and for this tree with buckets, each in its own process and Ray cluster.
Reported: molecules/s, ratios to today, Ray's molecules/s against the bare step of the same batching
(the limit), tokens computed per real token, validation −ELBO per variant and seed.

    python bench/molecule_throughput.py                         # ~8 min on 2 cores (another benchmark running)
    python bench/molecule_throughput.py --train-limit 8000 --val-size 1000 --epochs 4 --no-ray   # quality at 4× the steps
    python bench/molecule_throughput.py --train-limit 2000 --epochs 2 --seeds 1 --no-ray   # ~1 min smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.data import DataLoader, DistributedSampler

from bench._common import median, print_table, write_json
from vaeflow import config as cfg
from vaeflow import registry, stages
from vaeflow.models.families import build_model, family_of
from vaeflow.training.batching import DistributedBucketBatchSampler, train_loader
from vaeflow.training.loop import run_epoch, seeded_generator

ROOT = Path(__file__).resolve().parents[1]
PRESET = "configs/molecule/quick.yaml"
BASELINE_REV = "2732954"  # the commit before length buckets and per-batch token trimming
CPU = torch.device("cpu")
VARIANTS = ("today", "trimmed", "bucketed", "bf16")


def _config(work: Path, *overrides: str, root: Path = ROOT) -> cfg.ExperimentConfig:
    return cfg.load(root / PRESET, overrides=[
        f"tracking.uri=sqlite:///{work}/mlflow.db", f"tracking.artifact_location={work}/mlartifacts",
        f"train.storage_path={work}/ray_results", *overrides])


def _plain_collate(items: list[Any]) -> Any:
    """Today's collate: PyG's batch, token rows as wide as the split's longest molecule."""
    from torch_geometric.data import Batch

    return Batch.from_data_list(items)


def loader_for(variant: str, ds: Any, modality: Any, config: cfg.ExperimentConfig, buckets: int) -> tuple[DataLoader, Any]:
    """A one-process training loader of ``variant`` and the sampler to ``set_epoch`` on."""
    b = config.train.batch_size
    if variant == "bucketed":
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, length_buckets=buckets))
        return train_loader(ds, modality, config, per_worker=b, world=1, rank=0)
    sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=config.seed, drop_last=True)
    collate = _plain_collate if variant == "today" else modality.collate_fn()
    return DataLoader(ds, batch_size=b, sampler=sampler, drop_last=True, collate_fn=collate), sampler


def token_stats(loader: DataLoader) -> dict[str, float]:
    """Decoder steps computed (batch × width) per real token, and the mean batch width."""
    computed = real = width = n = 0
    for batch in loader:
        computed += batch.tokens.numel()
        real += int((batch.tokens != 0).sum())
        width += batch.tokens.shape[1]
        n += 1
    return {"tokens_computed_per_real": computed / real, "mean_batch_width": width / n}


def _median_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values)


def profile(variant: str, ds: Any, modality: Any, config: cfg.ExperimentConfig, spec: dict[str, Any],
            buckets: int, steps: int) -> dict[str, Any]:
    """Median milliseconds per training step of each part, on ``steps`` batches after one warm-up."""
    loader, sampler = loader_for(variant, ds, modality, config, buckets)
    sampler.set_epoch(0)
    torch.manual_seed(config.seed)
    model = build_model(config.model, spec)
    family = family_of(model)
    opt = family.optimizers(model, config.train)[0].optimizer
    parts: dict[str, list[float]] = {k: [] for k in ("collate", "encoder_fwd_bwd", "decoder_fwd_bwd", "loss_fwd_bwd", "optimizer")}
    it, epoch = iter(loader), 0
    for step in range(steps + 1):
        t0 = time.perf_counter()
        batch = next(it, None)
        if batch is None:  # a small data set: the next epoch's batches
            epoch += 1
            sampler.set_epoch(epoch)
            it = iter(loader)
            t0 = time.perf_counter()
            batch = next(it)
        t1 = time.perf_counter()
        inputs = modality.model_inputs(batch, config.data, train=True, generator=None)
        # The encoder and the decoder on their own (z detached), then the whole loss as the loop computes it.
        enc = model.encoder(inputs.x)
        (enc.mu.sum() + enc.logvar.sum()).backward()
        t2 = time.perf_counter()
        out = model.decoder(enc.mu.detach(), None, inputs.target)
        model.decoder.log_prob(out, inputs.target).mean().backward()
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        terms = family.terms(model, inputs, config=config, generator=seeded_generator(CPU, step))
        (terms["recon"] + terms["kl_objective"]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        t5 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t6 = time.perf_counter()
        if step:  # the first step warms up allocators and lazy imports
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t5 - t4, t6 - t5)):
                parts[k].append(v)
    ms = {k: _median_ms(v) for k, v in parts.items()}
    step_ms = ms["collate"] + ms["loss_fwd_bwd"] + ms["optimizer"]
    ops = _top_ops(model, family, modality, config, loader, sampler)
    return {"variant": variant, **{f"{k}_ms": v for k, v in ms.items()}, "step_ms": step_ms,
            **{f"{k}_share": ms[k] / step_ms for k in ("collate", "encoder_fwd_bwd", "decoder_fwd_bwd", "optimizer")},
            "rest_of_loss_ms": ms["loss_fwd_bwd"] - ms["encoder_fwd_bwd"] - ms["decoder_fwd_bwd"],
            "top_ops": ops}


def _top_ops(model: Any, family: Any, modality: Any, config: cfg.ExperimentConfig, loader: DataLoader, sampler: Any,
             steps: int = 2, top: int = 10) -> list[dict[str, Any]]:
    """torch.profiler's operators with the most self CPU time over ``steps`` forward + backward passes."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    sampler.set_epoch(1)
    batches = [b for _, b in zip(range(steps), loader)]  # fewer on a data set of fewer batches
    steps = len(batches)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches:
            inputs = modality.model_inputs(batch, config.data, train=True, generator=None)
            terms = family.terms(model, inputs, config=config, generator=None)
            (terms["recon"] + terms["kl_objective"]).backward()
            model.zero_grad(set_to_none=True)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps, "calls_per_step": e.count / steps}
            for e in rows]


def gru_packing(ds: Any, modality: Any, config: cfg.ExperimentConfig, spec: dict[str, Any], repeats: int = 3) -> dict[str, float]:
    """The decoder's GRU alone (forward + backward, quick preset sizes, one rank's batch of a random
    draw): padded to the batch's longest molecule, packed (``pack_padded_sequence``: no step on
    padding), and padded to the mean length (what a bucketed batch costs). Median ms of ``repeats``."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(config.seed)
    gru = build_model(config.model, spec).decoder.gru
    g = torch.Generator().manual_seed(config.seed)
    rows = torch.randperm(len(ds), generator=g)[: config.train.batch_size // config.train.num_workers]
    lengths = modality.lengths(ds)[rows]  # (B,)
    width, mean = int(lengths.max()), int(lengths.float().mean().ceil())
    x = torch.randn(len(rows), width, gru.input_size, generator=g, requires_grad=True)  # (B, L, E + code)
    h0 = torch.zeros(gru.num_layers, len(rows), gru.hidden_size)

    def padded(w: int) -> None:
        gru(x[:, :w], h0)[0].sum().backward()

    def packed() -> None:
        y, _ = gru(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False), h0)
        pad_packed_sequence(y, batch_first=True, total_length=width)[0].sum().backward()

    cases = {"padded_to_batch_max": lambda: padded(width), "packed": packed, "padded_to_mean_length": lambda: padded(mean)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats + 1):  # interleaved; the first round warms up
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {"batch": len(rows), "batch_max_tokens": width, "mean_tokens": mean,
            **{f"{k}_ms": _median_ms(v[1:]) for k, v in times.items()}}


def bare(variant: str, ds: Any, val_ds: Any, modality: Any, config: cfg.ExperimentConfig, spec: dict[str, Any],
         buckets: int, epochs: int) -> dict[str, Any]:
    """Train ``epochs`` epochs in this process; per-epoch training seconds and validation −ELBO."""
    # Every variant but bf16 trains in fp32, whatever the preset's train.precision says ("auto" is
    # bf16 on a CPU with bf16 instructions); validation is fp32 for all (run_epoch's rule).
    precision = "bf16" if variant == "bf16" else "fp32"
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, precision=precision))
    loader, sampler = loader_for(variant, ds, modality, config, buckets)
    val = DataLoader(val_ds, batch_size=config.train.batch_size, collate_fn=modality.collate_fn())
    torch.manual_seed(config.seed)  # the same initial weights for every variant of a seed
    model = build_model(config.model, spec)
    optimizers = family_of(model).optimizers(model, config.train)
    train_s, val_neg_elbo = [], []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        run_epoch(model, loader, modality, config, epoch=epoch, device=CPU, optimizer=optimizers,
                  generator=seeded_generator(CPU, config.seed, "train", epoch))
        train_s.append(time.perf_counter() - t0)
        val_neg_elbo.append(run_epoch(model, val, modality, config, epoch=epoch, device=CPU,
                                      generator=seeded_generator(CPU, config.seed, "val"))["neg_elbo"])
    examples = len(loader) * config.train.batch_size
    return {"variant": variant, "seed": config.seed, "train_s": train_s, "examples": examples,
            "molecules_per_s": examples / median(train_s[1:] or train_s), "val_neg_elbo": val_neg_elbo}


# One training job through vaeflow's Ray path, run in a fresh process whose `vaeflow` is the one on PYTHONPATH.
_RAY_JOB = """
import json, sys, time
from pathlib import Path
import vaeflow
from vaeflow import config as cfg, tracking
from vaeflow.training.ray import fit, init_ray
a = json.loads(sys.argv[1])
config = cfg.load(Path(a["preset"]), overrides=a["overrides"])
init_ray(num_cpus=a["cpus"])
run_id = tracking.start_run(config, {}, run_name=a["name"])
t = time.perf_counter()
result = fit(config, Path(a["processed"]), run_name=a["name"], run_id=run_id, progress=False)
print("RESULT " + json.dumps({"vaeflow": vaeflow.__file__, "wall_s": time.perf_counter() - t, "history": result.history}))
"""


def baseline_tree(rev: str, dest: Path) -> Path:
    """``vaeflow/`` and ``configs/`` as they were at ``rev`` (``git archive``; the working tree is untouched)."""
    tar = subprocess.run(["git", "archive", rev, "vaeflow", "configs"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        t.extractall(dest, filter="data")
    return dest


def ray_job(name: str, code_root: Path, work: Path, processed: Path, overrides: list[str], examples: int,
            cpus: int) -> dict[str, Any]:
    """Train through ``vaeflow.training.ray.fit`` of the vaeflow under ``code_root``; molecules/s in epochs 2..n."""
    args = {"preset": str(code_root / PRESET), "name": name, "processed": str(processed), "cpus": cpus,
            "overrides": [f"tracking.uri=sqlite:///{work}/mlflow.db", f"tracking.artifact_location={work}/mlartifacts",
                          f"train.storage_path={work}/ray_results", *overrides]}
    env = os.environ | {"PYTHONPATH": str(code_root)}
    proc = subprocess.run([sys.executable, "-c", _RAY_JOB, json.dumps(args)], cwd=code_root, env=env,
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"the Ray job {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(lines[-1][len("RESULT "):])
    history = out.pop("history")
    train_s = [row["epoch_time_s"] for row in history]
    return out | {"name": name, "train_s": train_s, "molecules_per_s": examples / median(train_s[1:] or train_s),
                  "val_neg_elbo": [row["val_neg_elbo"] for row in history]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-limit", type=int, default=3000, help="training molecules (a seeded MOSES subset)")
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per quality run (the quick preset trains 4)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per bare variant (the quality comparison)")
    parser.add_argument("--buckets", type=int, default=50, help="train.length_buckets of the bucketed variant")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the bare loop (1 = one Ray worker's; 2 on a loaded 2-core machine spin-waits)")
    parser.add_argument("--profile-steps", type=int, default=4)
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="the code Ray's `today` runs (git revision)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="bare variants to train (today, the baseline, always runs)")
    parser.add_argument("--no-ray", dest="ray", action="store_false", help="skip the Ray Train runs")
    parser.add_argument("--out", help="JSON path (default bench/results/molecule_throughput.json)")
    args = parser.parse_args(argv)
    args.variants = ["today", *(v for v in VARIANTS if v in args.variants and v != "today")]

    torch.set_num_threads(args.threads)
    modality = registry.MODALITIES.get_or_raise("molecule").data
    record: dict[str, Any] = {"settings": vars(args) | {"out": None}}
    with tempfile.TemporaryDirectory(prefix="vaeflow-bench-") as tmp:
        work = Path(tmp)
        data = [f"data.limit_train={args.train_limit}", f"data.val_size={args.val_size}", "data.limit_test=200"]
        config = _config(work, *data, f"train.epochs={args.epochs}", "train.length_buckets=0", "train.precision=fp32")
        paths = stages.Paths.for_modality("molecule", work)
        print(f"preparing {args.train_limit} MOSES training molecules", flush=True)
        stages.prepare(config, paths, progress=False)
        ds, val_ds = modality.load(paths.processed, "train"), modality.load(paths.processed, "val")
        spec = modality.input_spec(paths.processed)
        lengths = modality.lengths(ds).float()
        record["cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # e.g. AVX512: what bf16 runs on
        record["data"] = {"train": len(ds), "val": len(val_ds), "split_width": int(ds.data["tokens"].shape[1]),
                          "mean_tokens": float(lengths.mean()), "std_tokens": float(lengths.std())}

        variants = args.variants
        tokens = {}
        for v in variants:
            loader, sampler = loader_for(v, ds, modality, config, args.buckets)
            sampler.set_epoch(0)
            tokens[v] = token_stats(loader)
        print("profiling a training step", flush=True)
        profiles = [profile(v, ds, modality, config, spec, args.buckets, args.profile_steps) for v in ("today", "bucketed")]
        packing = gru_packing(ds, modality, config, spec)

        runs: list[dict[str, Any]] = []
        for seed in range(args.seeds):
            seeded = _config(work, *data, f"train.epochs={args.epochs}", f"seed={seed}")
            for v in variants:
                print(f"bare, seed {seed}: {v}", flush=True)
                runs.append(bare(v, ds, val_ds, modality, seeded, spec, args.buckets, 2 if v == "trimmed" else args.epochs))

        ray_runs: list[dict[str, Any]] = []
        if args.ray:
            examples = len(ds) // config.train.batch_size * config.train.batch_size
            ray_common = ["train.num_workers=2", "train.cpus_per_worker=1", "train.keep_checkpoints=1",
                          f"train.epochs={args.epochs}", *data]
            base = baseline_tree(args.baseline_rev, work / "baseline")
            print(f"Ray Train, 2 workers × 1 CPU: today ({args.baseline_rev})", flush=True)
            ray_runs.append({"variant": "today"} | ray_job("ray-today", base, work / "ray-today", paths.processed,
                                                           ray_common, examples, 2))
            this_tree = {"bucketed": [f"train.length_buckets={args.buckets}", "train.precision=fp32"],
                         "trimmed": ["train.precision=fp32"], "bf16": ["train.precision=bf16"]}
            for v in (v for v in variants if v in this_tree):
                print(f"Ray Train, 2 workers × 1 CPU: {v} (this tree)", flush=True)
                ray_runs.append({"variant": v} | ray_job(f"ray-{v}", ROOT, work / f"ray-{v}", paths.processed,
                                                         [*ray_common, *this_tree[v]], examples, 2))

    def rate(v: str) -> float:
        return median([r["molecules_per_s"] for r in runs if r["variant"] == v])

    def final(v: str) -> list[float]:
        return [r["val_neg_elbo"][-1] for r in runs if r["variant"] == v]

    rows = [{"path": f"bare, {args.threads} threads", "variant": v, "molecules_per_s": rate(v),
             "vs_today": rate(v) / rate("today"), **tokens[v],
             "val_neg_elbo_per_seed": ", ".join(f"{x:.2f}" for x in final(v)) if v != "trimmed" else "(2 epochs only)"}
            for v in variants]
    for r in ray_runs:
        rows.append({"path": "Ray, 2 workers × 1 CPU", "variant": r["variant"], "molecules_per_s": r["molecules_per_s"],
                     "vs_today": r["molecules_per_s"] / ray_runs[0]["molecules_per_s"],
                     "vs_bare_same_batching": r["molecules_per_s"] / rate(r["variant"]),
                     "val_neg_elbo_per_seed": f"{r['val_neg_elbo'][-1]:.2f}"})
    today = final("today")
    scored = [v for v in variants if v not in ("today", "trimmed")]  # trimmed's loss is today's, exactly
    quality = {
        "epochs": args.epochs, "bare_today": today, **{f"bare_{v}": final(v) for v in scored},
        # validation −ELBO of the variant minus today's, mean over seeds (positive: worse)
        **{f"bare_mean_difference_{v}": statistics.mean(b - a for a, b in zip(today, final(v))) for v in scored},
        # Seed-to-seed spread of today's runs: the noise a difference is read against.
        "bare_seed_sd_today": statistics.stdev(today) if len(today) > 1 else None,
        "ray": {r["variant"]: r["val_neg_elbo"][-1] for r in ray_runs},
    }
    print_table([{k: v for k, v in p.items() if k != "top_ops"} for p in profiles], "Where a bare training step's time goes (ms)")
    print_table(profiles[0]["top_ops"], "Top operators, today's batches (per step)")
    print_table([packing], "The decoder's GRU alone, forward + backward of one rank's batch (ms): padded, packed, bucketed-like")
    print_table(rows, f"Training throughput on {record['data']['train']} MOSES molecules (quick preset model, batch 128)")
    print(f"\nvalidation −ELBO after {args.epochs} epochs: {json.dumps(quality)}")
    record |= {"tokens": tokens, "profile": profiles, "gru_packing": packing, "bare_runs": runs, "ray_runs": ray_runs, "rows": rows, "quality": quality}
    write_json("molecule_throughput", record, args.out)
    return record


if __name__ == "__main__":
    main()

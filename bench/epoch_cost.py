"""What vaeflow's epoch function costs on top of a minimal training loop, part by part.

``bench/pythae_compare.py`` found vaeflow's training epoch slower than pythae's, and
``bench/overhead.py`` puts only part of that on Ray. This script times, in one process, on the same
model, data, batches and threads, one training epoch of:

  * ``loader``:   iterating vaeflow's DataLoader alone (collate of uint8 images + labels);
  * ``minimal``:  the loop pythae and most tutorials write: binarise, forward, ELBO, backward, Adam
    step, one ``loss.item()`` per step;
  * ``+guard``:   ``minimal`` plus vaeflow's NaN/inf guard (``clip_grad_norm_`` over all
    parameters, ``isfinite`` on the norm and the loss);
  * ``+metrics``: ``+guard`` plus vaeflow's per-step metric sums (``.item()`` of loss, recon, kl and
    −ELBO);
  * ``run_epoch``: ``vaeflow.training.loop.run_epoch`` itself;
  * ``pythae`` (``--pythae``, where pythae is installed): one epoch of pythae's own
    ``BaseTrainer.train_step`` on the same modules and initial weights, through its own data loader
    (per-item binarisation, the last incomplete batch kept: one step more than the others).

Alternating the variants inside one process is what makes their ratios hold on a machine whose
speed drifts by ±25% over minutes (the same job, run twice in a row in fresh processes, measured
17 and 27 s per epoch on 2026-12-07); ``bench/pythae_compare.py`` times whole jobs instead.

Every variant starts each repeat from the same initial weights and optimiser state and sees the same
batches; the order of the variants is reversed every other repeat. Reported: median seconds per
step and the ratio to ``minimal`` (paired within each repeat).

    python bench/epoch_cost.py                     # 10,000 images (78 steps of 128), 5 repeats
    python bench/epoch_cost.py --train-limit 2000 --repeats 2
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.data import DataLoader

from bench._common import Clock, median, print_table, write_json
from vaeflow import config as cfg
from vaeflow import registry, stages
from vaeflow.losses import elbo
from vaeflow.models.vae import build_model
from vaeflow.training.loop import run_epoch, seeded_generator

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("loader", "minimal", "+guard", "+metrics", "run_epoch")


def _step_fn(variant: str) -> Callable[..., None]:
    """One training step of ``variant`` (not for ``loader`` / ``run_epoch``)."""
    guard = variant in ("+guard", "+metrics")
    metrics = variant == "+metrics"

    def step(model: Any, optimizer: torch.optim.Optimizer, x: torch.Tensor, generator: torch.Generator) -> None:
        out = model(x, None, target=x, generator=generator)
        terms = elbo(model.decoder.log_prob(out.decoded, x), out.posterior.kl_standard_normal())
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        if guard:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
            if not (torch.isfinite(norm) and torch.isfinite(terms.loss)):
                raise FloatingPointError("non-finite loss")
        optimizer.step()
        if metrics:
            for value in (terms.loss, terms.recon, terms.kl, terms.neg_elbo):
                value.item()
        else:
            terms.loss.item()

    return step


def time_variant(variant: str, config: cfg.ExperimentConfig, modality: Any, loader: DataLoader,
                 init: dict[str, Any], epoch: int) -> Clock:
    """One training epoch of ``variant`` from the weights and optimiser state in ``init``."""
    model = build_model(config.model, init["spec"])
    model.load_state_dict(init["model"])
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    optimizer.load_state_dict(copy.deepcopy(init["optimizer"]))
    device = torch.device("cpu")
    generator = seeded_generator(device, config.seed, "train", epoch)
    model.train()
    if variant == "pythae":
        return _time_pythae(model, config, loader.dataset, epoch)
    with Clock() as clock:
        if variant == "run_epoch":
            run_epoch(model, loader, modality, config, epoch=epoch, device=device, optimizer=optimizer, generator=generator)
        elif variant == "loader":
            for _ in loader:
                pass
        else:
            step = _step_fn(variant)
            for batch in loader:
                x = modality.model_inputs(batch, config.data, train=True, generator=generator).x
                step(model, optimizer, x, generator)
    return clock


def _time_pythae(model: Any, config: cfg.ExperimentConfig, train: Any, epoch: int) -> Clock:
    """One epoch of pythae's ``BaseTrainer`` on ``model``'s encoder and decoder (its weights as given)."""
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    from bench.pythae_compare import _pythae_classes, pythae_model

    _, _, images = _pythae_classes()
    with tempfile.TemporaryDirectory(prefix="vaeflow-bench-pythae-") as out:
        trainer = BaseTrainer(
            model=pythae_model(model), train_dataset=images(train.x, torch.Generator().manual_seed(config.seed + epoch)),
            training_config=BaseTrainerConfig(output_dir=out, num_epochs=1, learning_rate=config.train.lr,
                                              per_device_train_batch_size=config.train.batch_size, optimizer_cls="Adam",
                                              seed=config.seed, no_cuda=True))
        trainer.prepare_training()  # the optimizer and callbacks its train() would set up
        with Clock() as clock:
            trainer.train_step(1)
    return clock


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=str(ROOT / "configs/image/quick.yaml"))
    p.add_argument("--train-limit", type=int, default=10_000, help="training images (a seeded subset)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pythae", action="store_true", help="also time pythae's own training step (needs pythae)")
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/epoch_cost.json)")
    args = p.parse_args(argv)
    variants = (*VARIANTS, "pythae") if args.pythae else VARIANTS
    if args.pythae and importlib.util.find_spec("pythae") is None:
        raise SystemExit("epoch_cost --pythae: pythae is not installed (pip install pythae; it is not a vaeflow dependency)")

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vaeflow-bench-") as tmp:
        work = Path(tmp)
        # β = 1, no warm-up, no free bits, no clipping: run_epoch computes the same loss as the others.
        config = cfg.load(args.preset, overrides=[
            f"data.limit_train={args.train_limit}", f"train.batch_size={args.batch_size}", "loss.beta=1.0",
            "loss.warmup_epochs=0", "loss.free_bits=0.0", "train.grad_clip=0.0", "train.precision=fp32",
        ])
        if config.modality != "image" or config.model.conditional:
            raise SystemExit("epoch_cost benchmark: give an unconditional image preset (--preset configs/image/…)")
        paths = stages.Paths.for_modality("image", work)
        stages.prepare(config, paths, progress=False)
        modality = registry.MODALITIES.get_or_raise("image").data
        train = modality.load(paths.processed, "train")
        spec = modality.input_spec(paths.processed)
        torch.manual_seed(config.seed)
        model = build_model(config.model, spec)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
        init = {"spec": spec, "model": copy.deepcopy(model.state_dict()), "optimizer": optimizer.state_dict()}
        steps = len(train) // args.batch_size
        print(f"{len(train)} images, {steps} steps of {args.batch_size}, {args.threads} threads, {args.repeats} repeats", flush=True)

        runs: list[dict[str, float]] = []  # per repeat: variant → seconds per step
        for r in range(args.repeats):
            # Same shuffled batches for every variant in a repeat.
            def loader() -> DataLoader:
                order = torch.Generator().manual_seed(config.seed + r)
                return DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True, generator=order,
                                  collate_fn=modality.collate_fn())

            order = variants if r % 2 == 0 else variants[::-1]
            runs.append({v: time_variant(v, config, modality, loader(), init, r).wall / steps for v in order})
            print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{v} {1e3 * s:.2f} ms/step" for v, s in runs[-1].items()),
                  flush=True)

    rows = [{"variant": v, "ms_per_step": 1e3 * median([run[v] for run in runs]),
             "vs_minimal": median([run[v] / run["minimal"] for run in runs]),
             "added_ms_per_step": 1e3 * median([run[v] - run["minimal"] for run in runs])} for v in variants]
    print_table(rows, f"Training epoch cost by part, median of {args.repeats} (image preset, {args.threads} threads)")
    record = {"settings": vars(args) | {"out": None}, "steps": steps, "rows": rows, "runs_s_per_step": runs}
    write_json("epoch_cost", record, args.out)
    return record


if __name__ == "__main__":
    main()

"""Sampling throughput: valid molecules per second from the molecule VAE, sequences per second from the
time-series VAEs, at realistic batch sizes on this machine's threads.

Molecules: the whole path a user gets from the sample stage (``vaeflow.modalities.molecule.task.write_samples``):
z ~ N(0, T² I) → ``decode_smiles`` (the decoder's autoregressive ``generate``, SELFIES tokens → SMILES,
RDKit canonical form) → RDKit validity (``chem.mol_from_smiles``); the rate counts valid molecules
only. The model is ``--checkpoint`` (e.g. ``models/molecule/model.pt``, a trained model) or, without
one, the molecule preset's model trained here for ``--epochs`` on ``--train-n`` prepared MOSES
molecules with the trainer's own epoch loop (``vaeflow.training.loop.run_epoch``, one process, no
Ray), so that generated sequences have realistic lengths (an untrained decoder runs to ``max_len``
or stops at random); the output says which.

Time series: each ``--ts-presets`` model (built from the preset and the prepared data's input spec,
untrained: a feed-forward decoder's cost does not depend on its weights) draws ``--ts-batch``
sequences with ``model.sample``, as the time-series sample stage does.

Protocol: one untimed warm-up batch per model; then ``--repeats`` repeats, each timing one batch of
every model back to back (order reversed every other repeat, so slow drift of the shared machine
falls on all of them), with a fixed generator seed per repeat; medians over repeats, in wall time and
in CPU time (this process, all threads; CPU / wall = the cores a run got on a shared machine). A
second molecule batch per repeat is split into its stages (``model.sample`` → tokens;
``tokens_to_smiles``; validity) to show where the time goes.

    python bench/sampling.py                                          # trains a small model first
    python bench/sampling.py --checkpoint models/molecule/model.pt    # the pipeline's trained model
    python bench/sampling.py --batch 1000 --ts-batch 1024 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/sampling.py`: the repository root holds `bench`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench._common import Clock, median, print_table, write_json  # noqa: E402
from vaeflow.modalities.molecule import chem, task as molecules  # noqa: E402
from vaeflow import config as cfg  # noqa: E402
from vaeflow.download import DataNotFoundError  # noqa: E402
from vaeflow.modalities.molecule.data import MoleculeData  # noqa: E402
from vaeflow.modalities.timeseries.data import TimeSeriesData  # noqa: E402
from vaeflow.models.vae import VAE, build_model  # noqa: E402
from vaeflow.training.checkpoint import load_model  # noqa: E402
from vaeflow.training.loop import run_epoch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MOLECULE_PRESET = ROOT / "configs/molecule/quick.yaml"
TS_PRESETS = (ROOT / "configs/timeseries/quick.yaml", ROOT / "configs/timeseries/full.yaml")


def train_small_molecule_model(config: cfg.ExperimentConfig, n: int, epochs: int, work: Path) -> tuple[VAE, dict[str, Any]]:
    """The preset's model trained for ``epochs`` on ``n`` prepared MOSES training molecules (no
    validation or test split prepared). Returns the model and its last epoch's metrics."""
    from torch.utils.data import DataLoader

    modality = MoleculeData()
    data = dataclasses.replace(config.data, limit_train=n, val_size=0, limit_test=0)
    modality.prepare(data, config.seed, work / "molecule", progress=False)
    spec = modality.input_spec(work / "molecule")
    dataset = modality.load(work / "molecule", "train")
    torch.manual_seed(config.seed)
    model = build_model(config.model, spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    loader = DataLoader(dataset, batch_size=config.train.batch_size, shuffle=True, collate_fn=modality.collate_fn(),
                        generator=torch.Generator().manual_seed(config.seed))
    run_config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs))
    metrics: dict[str, Any] = {}
    for epoch in range(epochs):
        metrics = run_epoch(model, loader, modality, run_config, epoch=epoch, device=torch.device("cpu"),
                            generator=torch.Generator().manual_seed(config.seed * 100_000 + epoch), optimizer=optimizer)
    model.eval()
    return model, metrics | {"n_train": len(dataset), "epochs": epochs}


def molecule_batch(model: VAE, n: int, temperature: float, seed: int) -> tuple[Clock, int]:
    """The sample stage's path for one batch: z ~ prior → ``decode_smiles`` → RDKit validity.
    Returns its clock and the number of valid molecules."""
    generator = torch.Generator().manual_seed(seed)
    with Clock() as clock:
        z = temperature * torch.randn(n, model.latent_dim, generator=generator)
        smiles = molecules.decode_smiles(model, z, greedy=False, generator=generator)
        valid = sum(chem.mol_from_smiles(s) is not None for s in smiles)
    return clock, valid


def molecule_stages(model: VAE, n: int, temperature: float, seed: int) -> dict[str, Any]:
    """The same path split into stages (``model.sample`` draws z and generates tokens), with the
    mean generated length in tokens (``<eos>`` included)."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.decoder.vocab
    with Clock() as gen:
        tokens = model.sample(n, generator=generator, temperature=temperature, mean=False)
    with Clock() as to_smiles:
        smiles = molecules.tokens_to_smiles(tokens, vocab)
    with Clock() as validity:
        valid = [chem.mol_from_smiles(s) is not None for s in smiles]
    lengths = (tokens != vocab.index("<pad>")).sum(1).float()
    return {"generate_s": gen.wall, "tokens_to_smiles_s": to_smiles.wall, "validity_s": validity.wall,
            "mean_tokens": lengths.mean().item(), "valid_fraction": sum(valid) / n,
            "unique_fraction": len({s for s, ok in zip(smiles, valid) if ok}) / max(sum(valid), 1)}


def timeseries_model(preset: Path, work: Path) -> tuple[VAE, cfg.ExperimentConfig]:
    """The preset's (untrained) model for its data set's input spec (the data are prepared into ``work``)."""
    config = cfg.load(preset)
    modality = TimeSeriesData()
    out = work / f"timeseries-{preset.stem}"
    modality.prepare(config.data, config.seed, out, progress=False)
    torch.manual_seed(config.seed)
    model = build_model(config.model, modality.input_spec(out))
    model.eval()
    return model, config


def timeseries_batch(model: VAE, n: int, temperature: float, seed: int) -> Clock:
    """One batch as the time-series sample stage draws it (``model.sample``)."""
    generator = torch.Generator().manual_seed(seed)
    with Clock() as clock:
        model.sample(n, generator=generator, temperature=temperature)
    return clock


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a trained molecule checkpoint (models/molecule/model.pt); "
                                                     "default: train a small model here")
    p.add_argument("--preset", default=str(MOLECULE_PRESET), help="molecule preset (model and data) without --checkpoint")
    p.add_argument("--train-n", type=int, default=3000, help="MOSES molecules to train the small model on")
    p.add_argument("--epochs", type=int, default=1, help="epochs for the small model")
    p.add_argument("--batch", type=int, default=1000, help="molecules per batch (the sample stage's batch)")
    p.add_argument("--ts-presets", type=lambda s: [Path(x) for x in s.split(",")], default=list(TS_PRESETS),
                   help="time-series presets, comma-separated (default: quick and full)")
    p.add_argument("--ts-batch", type=int, default=1024, help="sequences per batch (the evaluation's batch)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/sampling.json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    chem.quiet_rdkit()
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="vaeflow-bench-") as tmp:
        try:
            ts = {preset.stem: timeseries_model(preset, Path(tmp)) for preset in args.ts_presets}  # cheap: fail fast
            if args.checkpoint:
                model, config, _ = load_model(args.checkpoint)
                if config.modality != "molecule":
                    raise SystemExit(f"--checkpoint {args.checkpoint} holds a {config.modality} model, not a molecule model")
                source = {"model": f"checkpoint {args.checkpoint}"}
            else:
                config = cfg.load(args.preset)
                started = time.perf_counter()
                model, fit = train_small_molecule_model(config, args.train_n, args.epochs, Path(tmp))
                source = {"model": f"trained here: {fit['epochs']} epoch(s) on {fit['n_train']} MOSES molecules "
                                   f"({Path(args.preset).name} model), {time.perf_counter() - started:.0f} s",
                          "train_metrics": fit}
        except (FileNotFoundError, DataNotFoundError) as exc:
            raise SystemExit(f"sampling benchmark: {exc}") from None
    print(f"molecule model: {source['model']}", flush=True)
    temperature = config.sample.temperature

    steps: list[tuple[str, Callable[[int], Any]]] = [
        ("molecule", lambda seed: molecule_batch(model, args.batch, temperature, seed)),
        ("molecule_stages", lambda seed: molecule_stages(model, args.batch, temperature, seed)),
        *((f"timeseries_{name}", lambda seed, m=m, c=c: timeseries_batch(m, args.ts_batch, c.sample.temperature, seed))
          for name, (m, c) in ts.items()),
    ]
    for _, fn in steps:  # warm-up: first-call allocations, lazy imports
        fn(args.seed)
    runs: list[dict[str, Any]] = []
    for r in range(args.repeats):
        seed = args.seed + 1 + r
        runs.append({name: fn(seed) for name, fn in (steps if r % 2 == 0 else steps[::-1])})
        mol_clock, valid = runs[-1]["molecule"]
        print(f"repeat {r + 1}/{args.repeats}: {valid / mol_clock.wall:.0f} valid molecules/s", flush=True)

    mol_runs = [run["molecule"] for run in runs]
    stages = [run["molecule_stages"] for run in runs]
    molecule = {
        "batch": args.batch, "temperature": temperature, "max_len": model.decoder.max_len,
        "valid_per_s": median([v / c.wall for c, v in mol_runs]),
        "valid_per_cpu_s": median([v / c.cpu for c, v in mol_runs]),
        "sampled_per_s": median([args.batch / c.wall for c, _ in mol_runs]),
        "cores_used": median([c.cpu / c.wall for c, _ in mol_runs]),
        "valid_fraction": median([v / args.batch for _, v in mol_runs]),
        "unique_fraction": median([s["unique_fraction"] for s in stages]),
        "mean_tokens": median([s["mean_tokens"] for s in stages]),
        "stage_share": {k: median([s[f"{k}_s"] / (s["generate_s"] + s["tokens_to_smiles_s"] + s["validity_s"]) for s in stages])
                        for k in ("generate", "tokens_to_smiles", "validity")},
    } | source
    timeseries = {}
    for name, (m, c) in ts.items():
        clocks = [run[f"timeseries_{name}"] for run in runs]
        timeseries[name] = {"batch": args.ts_batch, "decoder": c.model.decoder.name, "dataset": c.data.dataset,
                            "length": m.input_spec["length"], "channels": m.input_spec["channels"],
                            "parameters": sum(p.numel() for p in m.parameters()),
                            "sequences_per_s": median([args.ts_batch / k.wall for k in clocks]),
                            "sequences_per_cpu_s": median([args.ts_batch / k.cpu for k in clocks]),
                            "cores_used": median([k.cpu / k.wall for k in clocks])}

    threads = torch.get_num_threads()
    rows = [{"model": f"molecule ({'checkpoint' if args.checkpoint else 'trained here'})", "batch": args.batch,
             "threads": threads, "per_s": molecule["valid_per_s"], "unit": "valid molecules",
             "per_cpu_s": molecule["valid_per_cpu_s"], "cores_used": molecule["cores_used"]}]
    rows += [{"model": f"timeseries {name} ({t['decoder']}, {t['dataset']}, untrained)", "batch": t["batch"], "threads": threads,
              "per_s": t["sequences_per_s"], "unit": f"sequences ({t['length']}×{t['channels']})",
              "per_cpu_s": t["sequences_per_cpu_s"], "cores_used": t["cores_used"]} for name, t in timeseries.items()]
    print_table(rows, f"Sampling throughput, median of {args.repeats} repeats")
    share = molecule["stage_share"]
    print_table([{"valid": molecule["valid_fraction"], "unique": molecule["unique_fraction"],
                  "mean_tokens": molecule["mean_tokens"], "max_len": molecule["max_len"],
                  "generate_share": share["generate"], "tokens_to_smiles_share": share["tokens_to_smiles"],
                  "validity_share": share["validity"]}], f"Molecule samples and where the time goes ({source['model']})")

    record = {"repeats": args.repeats, "threads": threads, "seed": args.seed, "molecule": molecule, "timeseries": timeseries,
              "runs": [{"molecule_wall_s": run["molecule"][0].wall, "molecule_valid": run["molecule"][1],
                        **{k: v.wall for k, v in run.items() if k.startswith("timeseries_")}} for run in runs],
              "loadavg_1min_before_after": [load_before[0], os.getloadavg()[0]]}
    write_json("sampling", record, args.out)
    return record


if __name__ == "__main__":
    main()

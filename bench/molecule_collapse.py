"""Does the molecule VAE use z? Posterior-collapse diagnostics for settings of the same preset.

An autoregressive SELFIES decoder can model molecules well without z; the KL then settles at the
free-bits floor and the posterior mean carries almost nothing about the molecule (reconstruction
accuracy 0). This script trains the preset's model once per *variant* (a list of config overrides),
in one process, on the same prepared data, seed, batches and threads, and after every epoch reports
on the validation molecules:

  * ``val_neg_elbo`` and ``val_kl`` (nats per molecule);
  * ``active_units``: latent dimensions whose posterior mean varies across molecules,
    Cov_x(E_q[z_d]) > 0.01 (Burda et al. 2016);
  * ``recon_acc``: share of molecules whose greedy decoding from the posterior mean is the same
    canonical molecule (the ``evaluate`` stage's measure); ``recon_tanimoto``, the mean Tanimoto
    similarity of each molecule to its decoding, and ``recon_tanimoto_shuffled``, to another
    molecule's decoding (what ignoring z scores): their gap grades z while exact matches are 0;
  * ``unique`` and ``novel`` of prior samples (every sample is valid by construction), and their
    ``FCD_Test`` against MOSES's stored test statistics (on ``--samples`` molecules, so higher than
    the ``evaluate`` stage's 10,000-sample figure; compare it between variants, not with papers).

    python bench/molecule_collapse.py                          # quick preset, 4 epochs, 3 variants
    python bench/molecule_collapse.py --epochs 2 --variant wd=model.decoder.word_dropout=0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.data import DataLoader

from bench._common import Clock, print_table, write_json
from vaeflow import config as cfg
from vaeflow import registry, stages
from vaeflow.modalities.molecule import metrics as M
from vaeflow.models.vae import build_model
from vaeflow.registry import DATASETS
from vaeflow.modalities.molecule.task import decode_smiles, reconstruction_metrics
from vaeflow.training.loop import run_epoch, seeded_generator

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = (
    "preset=",
    "word_dropout_0.25=model.decoder.word_dropout=0.25",
    "word_dropout_0.5=model.decoder.word_dropout=0.5",
)


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name=key=value,key=value`` (or ``name=`` for the preset as it is) → (name, overrides)."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"molecule_collapse: --variant {text!r} is not NAME=key=value[,key=value…] (or NAME= for none)")
    return name, [o for o in rest.split(",") if o]


@torch.no_grad()
def diagnostics(model: Any, val: Any, modality: Any, config: cfg.ExperimentConfig, train_smiles: frozenset[str],
                reference: dict[str, Any] | None, device: torch.device, *, n_recon: int, n_samples: int) -> dict[str, float]:
    model.eval()
    loader = DataLoader(val, batch_size=256, collate_fn=modality.collate_fn())
    val_metrics = run_epoch(model, loader, modality, config, epoch=0, device=device, generator=seeded_generator(device, 0, "val", 0))
    mus = torch.cat([model.encode(batch.to(device), None).mu for batch in loader])
    active = int((mus.var(0) > 0.01).sum())
    recon = reconstruction_metrics(model, val, n=n_recon)
    z = torch.randn(n_samples, model.latent_dim, generator=torch.Generator().manual_seed(config.seed)).to(device)
    samples = [s for s in decode_smiles(model, z, greedy=False, generator=torch.Generator(device=device).manual_seed(config.seed)) if s]
    canon = set(samples)
    out = {"val_neg_elbo": val_metrics["neg_elbo"], "val_kl": val_metrics["kl"], "active_units": active,
           "recon_acc": recon["recon_accuracy"], "recon_tanimoto": recon["recon_tanimoto"],
           "recon_tanimoto_shuffled": recon["recon_tanimoto_shuffled"], "unique": len(canon) / n_samples,
           "novel": sum(s not in train_smiles for s in canon) / max(len(canon), 1)}
    if reference is not None:
        out["FCD_Test"] = M.fcd_distance(reference["FCD"], M.fcd_statistics(samples))
    return out


@dataclasses.dataclass(frozen=True)
class Data:
    """What every variant trains and is measured on, loaded once."""

    modality: Any
    train: Any
    val: Any
    spec: dict[str, Any]
    train_smiles: frozenset[str]
    reference: dict[str, Any] | None  # MOSES's stored test statistics, where the data set has them

    @classmethod
    def load(cls, processed: Path, dataset: str) -> Data:
        modality = registry.MODALITIES.get_or_raise("molecule").data
        train = modality.load(processed, "train")
        stats = DATASETS.get_or_raise(dataset).reference_stats.get("test")
        return cls(modality, train, modality.load(processed, "val"), modality.input_spec(processed),
                   frozenset(train.smiles), M.load_reference(stats()) if stats else None)


def run_variant(name: str, config: cfg.ExperimentConfig, data: Data, device: torch.device, *, n_recon: int,
                n_samples: int) -> list[dict[str, Any]]:
    modality, train, val, spec = data.modality, data.train, data.val, data.spec
    torch.manual_seed(config.seed)
    model = build_model(config.model, spec).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    rows = []
    for epoch in range(config.train.epochs):
        order = torch.Generator().manual_seed(config.seed + epoch)  # same batches for every variant
        loader = DataLoader(train, batch_size=config.train.batch_size, shuffle=True, drop_last=True, generator=order,
                            collate_fn=modality.collate_fn())
        with Clock() as clock:
            train_metrics = run_epoch(model, loader, modality, config, epoch=epoch, device=device, optimizer=optimizer,
                                      generator=seeded_generator(device, config.seed, "train", epoch))
        row = {"variant": name, "epoch": epoch + 1, "train_s": clock.wall, "beta": train_metrics["beta"],
               "train_kl": train_metrics["kl"]}
        row |= diagnostics(model, val, modality, config, data.train_smiles, data.reference, device,
                           n_recon=n_recon, n_samples=n_samples)
        rows.append(row)
        print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=str(ROOT / "configs/molecule/quick.yaml"))
    p.add_argument("--train-limit", type=int, default=None, help="training molecules (default: the preset's)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the preset's)")
    p.add_argument("--variant", action="append", default=None,
                   help="NAME=key=value[,key=value…]: one trained model per variant (repeatable)")
    p.add_argument("--recon", type=int, default=500, help="validation molecules decoded for recon_acc")
    p.add_argument("--samples", type=int, default=1000, help="prior samples for unique / novel / FCD_Test")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda when there is one; the preset's precision applies there)")
    p.add_argument("--root", default=None, help="project folder with prepared data, used as it is (--train-limit then "
                   "has no effect; default: prepare in a temp dir)")
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/molecule_collapse.json)")
    args = p.parse_args(argv)
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]

    torch.set_num_threads(args.threads)
    base = [f"data.limit_train={args.train_limit}"] if args.train_limit else []
    base += [f"train.epochs={args.epochs}"] if args.epochs else []
    try:
        configs = {name: cfg.load(args.preset, overrides=base + overrides) for name, overrides in variants}
    except cfg.ConfigError as exc:
        raise SystemExit(f"molecule_collapse: {exc}") from None
    if any(c.modality != "molecule" or c.model.conditional for c in configs.values()):
        raise SystemExit("molecule_collapse: give an unconditional molecule preset (--preset configs/molecule/…)")
    with tempfile.TemporaryDirectory(prefix="vaeflow-bench-") as tmp:
        paths = stages.Paths.for_modality("molecule", Path(args.root or tmp))
        if not (paths.processed / "spec.json").exists():
            stages.prepare(next(iter(configs.values())), paths, progress=False)
        data = Data.load(paths.processed, next(iter(configs.values())).data.dataset)
        rows = [row for name, config in configs.items()
                for row in run_variant(name, config, data, torch.device(args.device), n_recon=args.recon,
                                       n_samples=args.samples)]
    last = [r for r in rows if r["epoch"] == max(x["epoch"] for x in rows if x["variant"] == r["variant"])]
    print_table(rows, "Per epoch")
    print_table(last, "After the last epoch")
    record = {"settings": vars(args) | {"out": None}, "variants": dict(variants), "rows": rows}
    write_json("molecule_collapse", record, args.out)
    return record


if __name__ == "__main__":
    main()

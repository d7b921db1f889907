"""Four image families side by side at one CPU training budget: VAE, β-VAE, VQ-VAE + PixelCNN prior, VAE-GAN.

Each family trains on the whole Fashion-MNIST (55k train / 5k validation / 10k test) through vaeflow's
real stages (prepare → classifier → train on Ray Train with 2 workers × 1 CPU → sample → evaluate),
from its preset, for the same wall-clock training budget (``train.time_limit_minutes``: every epoch
that starts inside the budget finishes, so a family may overrun it by up to one epoch; the table
gives the training time each really got). The VQ-VAE's budget is split in half between its two
phases: a calibration run of one epoch of each phase (not counted) sets ``model.vq.prior_start_epoch``
and ``train.epochs`` so that each phase gets about half (its epochs, not the clock, then end it, so
that the prior always trains).

Columns, all from the same test split and the same in-domain classifier (one per data set, trained
once by the ``classifier`` stage):
  - FD, precision, recall of ``evaluate.n_fd_samples`` prior samples against the test set
    (docs/image.md), with the two reference points (training set vs test set: the floor; a blurred
    test set);
  - reconstruction error of the first 2,000 test images, each family given the input form it was
    trained on (binarised for the VAE, β-VAE and VQ-VAE, grey for the VAE-GAN): MSE per pixel in
    [0, 1] against the grey test image (``recon_mse``) and against that input (``recon_mse_input``),
    and the family's own reconstruction term in nats (``test_recon_nats``, Bernoulli −log p(x | z)
    of its inputs: binarised, or grey levels as soft targets for the VAE-GAN);
  - NLL where it is defined: the VAE's and β-VAE's IWAE NLL (k = ``evaluate.iwae_k``, first
    ``evaluate.iwae_examples`` test images) and the VQ-VAE prior's bits per dimension over the code
    grid; the VAE-GAN has none;
  - epochs reached, training seconds, median seconds per training pass.
One sample grid per family is logged to its MLflow run (``samples/prior_samples.png``) and copied to
``docs/figures/image_families/<family>.png``.

    python bench/image_families.py --budget-minutes 15           # the issue's budget: about 75 min
    python bench/image_families.py --budget-minutes 8            # the run in BENCHMARKS.md: about 55 min
    python bench/image_families.py --budget-minutes 0.05 --variants vae,vaegan --set data.limit_train=2000 \\
        --no-figures --out /tmp/f.json                                    # a smoke run (tests)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import pipeline_config, print_table, run_stages, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "docs/figures/image_families"

# name → (preset, overrides): each family as its preset defines it; β-VAE is the VAE with β = 4.
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "vae": ("configs/image/quick.yaml", ()),
    "beta_vae": ("configs/image/quick.yaml", ("loss.beta=4.0",)),
    "vqvae": ("configs/image/vqvae.yaml", ()),
    "vaegan": ("configs/image/vaegan.yaml", ()),
}
MAX_EPOCHS = 1000  # the budget, not the epoch count, ends training


def _link(shared: Path, root: Path, rel: str) -> None:
    """Share the prepared data and the classifier between the families' project folders."""
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to((shared / rel).resolve(), target_is_directory=True)


def _history(root: Path) -> list[dict[str, float]]:
    """The train stage's per-epoch rows (an empty cell, a metric not measured that epoch, as NaN)."""
    with open(root / "plots/image/history.csv", newline="") as f:
        return [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def _vq_epochs(shared: Path, work: Path, preset: str, overrides: Sequence[str], budget_s: float) -> list[str]:
    """Calibrate the VQ-VAE's two phases (one epoch each, full data) and split the budget in half."""
    root = work / "vqvae_calibration"
    for rel in ("data/processed/image", "models/classifier/image"):
        _link(shared, root, rel)
    config = pipeline_config(preset, root, [*overrides, "train.epochs=2", "model.vq.prior_start_epoch=1"])
    run_stages(config, root, ["train"])
    vq, prior = (row["epoch_time_s"] for row in _history(root))
    # A training pass is ~90 % of an epoch here (validation and the checkpoint are the rest).
    k1 = max(1, round(budget_s / 2 / (vq / 0.9)))
    k2 = max(1, round(budget_s / 2 / (prior / 0.9)))
    print(f"vqvae calibration: {vq:.1f} s per VQ-VAE pass, {prior:.1f} s per prior pass → {k1} + {k2} epochs")
    return [f"model.vq.prior_start_epoch={k1}", f"train.epochs={k1 + k2}"]


@torch.no_grad()
def reconstruction_mse(root: Path, config: Any, n: int = 2000) -> dict[str, float]:
    """Mean squared error per pixel, in [0, 1], of the reconstructions of the first ``n`` test images
    in the form the model was trained on (binarised or grey): against the grey images (``recon_mse``:
    how close to the real image) and against that input itself (``recon_mse_input``: how well it
    reproduces what it was given; the same for a model of grey pixels)."""
    from vaeflow.modalities.image.data import ImageData
    from vaeflow.models.families import family_of
    from vaeflow.training import checkpoint

    model, _, _ = checkpoint.load_model(root / "models/image/model.pt", torch.device("cpu"), modality="image")
    data = ImageData()
    test = data.load(root / "data/processed/image", "test")
    grey = test.x[:n].float() / 255.0  # (n, C, H, W)
    shown = data.fixed(test, config.data, config.seed).x[:n].float() / 255.0  # what the model was trained on
    labels = test.y[:n] if getattr(model, "num_classes", 0) else None
    recon = torch.cat([family_of(model).reconstruct(model, shown[i:i + 500], None if labels is None else labels[i:i + 500])
                       for i in range(0, n, 500)]).float()
    return {"recon_mse": float(((recon - grey) ** 2).mean()), "recon_mse_input": float(((recon - shown) ** 2).mean())}


def run_variant(name: str, shared: Path, work: Path, budget_min: float, extra: Sequence[str],
                figures: bool) -> dict[str, Any]:
    preset, own = VARIANTS[name]
    root = work / name
    for rel in ("data/processed/image", "models/classifier/image"):
        _link(shared, root, rel)
    if name == "vqvae":  # both phases must train: the calibrated epochs, not the clock, end it
        overrides = [*own, *extra, *_vq_epochs(shared, work, preset, [*own, *extra], budget_min * 60)]
    else:
        overrides = [*own, *extra, f"train.epochs={MAX_EPOCHS}", f"train.time_limit_minutes={budget_min}"]
    config = pipeline_config(preset, root, overrides)
    out = run_stages(config, root, ["train", "sample", "evaluate"])
    history = _history(root)
    ev, tr = out["evaluate"], out["train"]
    row: dict[str, Any] = {
        "family": name,
        "fd": ev.get("fd"), "precision": ev.get("precision"), "recall": ev.get("recall"),
        **reconstruction_mse(root, config),
        "test_recon_nats": ev.get("test_recon"),  # the family's own −log p(x | z) of its inputs
        "nll_nats": ev.get("test_nll_iwae") if config.model.family == "vae" else None,
        "prior_bits_per_dim": ev.get("test_prior_bits_per_dim"),
        "epochs": tr["epochs"],
        "train_s": sum(r["epoch_time_s"] for r in history),
        "s_per_epoch": tr["median_epoch_time_s"],
    }
    if config.model.family == "vqvae":
        row["vq_epochs"] = config.model.vq.prior_start_epoch
    if "last_val_fd" in tr:  # the VAE-GAN's FD while it trained (model.vaegan.fd_every_epochs)
        row["val_fd"] = tr["last_val_fd"]
        row["val_fd_by_epoch"] = {int(r["epoch"]): r["val_fd"] for r in history if not math.isnan(r.get("val_fd", math.nan))}
    row["evaluate"] = ev
    if figures:
        FIGURES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "samples/image/prior_samples.png", FIGURES / f"{name}.png")
    return row


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-minutes", type=float, default=15.0, help="training budget per family (wall clock)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for every family (e.g. data.limit_train=2000 for a smoke run)")
    p.add_argument("--workdir", type=Path, default=None, help="project folders (default: a temporary one)")
    p.add_argument("--no-figures", action="store_true", help="do not copy the sample grids into docs/figures")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")

    with tempfile.TemporaryDirectory(prefix="image_families_") as tmp:
        work = (args.workdir or Path(tmp)).resolve()
        shared = work / "shared"
        base = pipeline_config(VARIANTS["vae"][0], shared, args.overrides)
        setup = run_stages(base, shared, ["prepare", "classifier"])
        rows = [run_variant(n, shared, work, args.budget_minutes, args.overrides, not args.no_figures) for n in names]

    ev = rows[0]["evaluate"]
    references = [
        {"family": "reference: training set vs test set", "fd": ev.get("fd_train_vs_test"),
         "precision": ev.get("precision_train_vs_test"), "recall": ev.get("recall_train_vs_test")},
        {"family": "reference: blurred test set", "fd": ev.get("fd_blurred_test"),
         "precision": ev.get("precision_blurred_test"), "recall": ev.get("recall_blurred_test")},
    ]
    table = [{k: v for k, v in r.items() if k not in ("evaluate", "val_fd_by_epoch") and v is not None}
             for r in rows] + references
    print_table(table, f"image families at {args.budget_minutes:g} min of training each (Fashion-MNIST, 2 workers × 1 CPU)")
    finite = all(math.isfinite(r["fd"]) for r in rows if r.get("fd") is not None)
    record = {"budget_minutes": args.budget_minutes, "overrides": args.overrides, "rows": rows, "references": references,
              "classifier_test_accuracy": setup["classifier"].get("test_accuracy"), "all_fd_finite": finite}
    write_json("image_families", record, args.out)
    return record


if __name__ == "__main__":
    main()

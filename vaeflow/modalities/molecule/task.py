"""Molecule generation as library functions: decode tokens, sample, evaluate, interpolate, optimise.

Used by the molecule modality's sample/evaluate hooks and by ``vaeflow interpolate`` /
``vaeflow optimize``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaeflow.modalities.molecule import chem
from vaeflow.config import ConfigError
from vaeflow.io import atomic_path
from vaeflow.modalities.base import ModalityTask
from vaeflow.modalities.molecule.data import MoleculeData, tokens_to_smiles
from vaeflow.models.families import family_of

log = logging.getLogger(__name__)


def decode_smiles(model: Any, z: torch.Tensor, *, greedy: bool, generator: torch.Generator | None = None,
                  condition: torch.Tensor | None = None) -> list[str]:
    """Decode latent codes into SMILES through the family's ``decode``: greedy, or sampled tokens.
    Shapes: z (N, latent_dim); condition (N, P) standardised properties, for a property-conditional
    model only."""
    with torch.no_grad():
        tokens = family_of(model).decode(model, z, condition, mean=greedy, generator=generator)
    return tokens_to_smiles(tokens.cpu(), model.input_spec["vocab"])


def encode_smiles(model: Any, smiles: Sequence[str], spec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Posterior means of SMILES strings, and their condition (standardised properties) when the
    model is property-conditional, else None. Shapes: → (N, latent_dim), (N, P).

    Raises:
        ValueError: a SMILES cannot be featurised; the message names it and why.
    """
    device = next(model.parameters()).device
    batch = MoleculeData().encoder_input(list(smiles), spec).to(device)
    condition = batch.properties if model.conditional else None
    with torch.no_grad():
        return family_of(model).encode(model, batch, condition), condition


def sample_conditions(model: Any, spec: dict[str, Any], targets: dict[str, float], n: int, *,
                      generator: torch.Generator | None, train_properties: torch.Tensor | None = None) -> torch.Tensor | None:
    """Conditions for ``n`` samples of a property-conditional model, None for any other model.

    With ``train_properties``, each row is a random training molecule's standardised properties, with
    the properties named in ``targets`` (real units) replaced by the target, so unnamed properties keep
    their joint distribution; without, unnamed properties sit at the training mean.
    Shapes: train_properties (N_train, P) standardised → (n, P).

    Raises:
        ConfigError: a target names an unknown property, or the model is not property-conditional.
    """
    if not model.condition_dim:
        if targets:
            raise ConfigError("sample.properties is set but this model is not property-conditional; "
                              "train with model.conditional: true, or remove sample.properties")
        return None
    names = spec["properties"]
    unknown = sorted(set(targets) - set(names))
    if unknown:
        raise ConfigError(f"sample.properties: unknown property {unknown[0]!r}; use one of {names}")
    if train_properties is None:
        cond = torch.zeros(n, len(names))
    else:
        device = generator.device if generator is not None else "cpu"
        cond = train_properties[torch.randint(len(train_properties), (n,), generator=generator, device=device).cpu()]
    for name, value in targets.items():
        j = names.index(name)
        cond[:, j] = (float(value) - spec["property_mean"][j]) / spec["property_std"][j]
    return cond.to(next(model.parameters()).device)


def property_rows(smiles: Sequence[str], train: set[str] | None) -> list[dict[str, Any]]:
    """CSV rows: SMILES, canonical form, validity, novelty and the four MOSES properties."""
    rows = []
    for s in smiles:
        mol = chem.mol_from_smiles(s)
        row: dict[str, Any] = {"SMILES": s, "canonical": "", "valid": mol is not None, "novel": ""}
        if mol is not None:
            from rdkit import Chem

            row["canonical"] = Chem.MolToSmiles(mol)
            row["novel"] = "" if train is None else row["canonical"] not in train
            row |= dict(zip(chem.PROPERTIES, (round(v, 4) for v in chem.properties(mol))))
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    fields = ["SMILES", "canonical", "valid", "novel", *chem.PROPERTIES]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)


def grid_image(smiles: Sequence[str], path: Path, *, n: int = 24, per_row: int = 6) -> None:
    from rdkit import Chem
    from rdkit.Chem import Draw

    mols = [m for m in (chem.mol_from_smiles(s) for s in smiles[: 4 * n]) if m is not None][:n]
    img = Draw.MolsToGridImage(mols, molsPerRow=per_row, subImgSize=(250, 200),
                               legends=[Chem.MolToSmiles(m)[:40] for m in mols])
    with atomic_path(path) as tmp:
        img.save(str(tmp), format="PNG")


def write_samples(data: MoleculeData, model: Any, config: Any, paths: Any, out_dir: Path,
                  generator: torch.Generator) -> dict[str, Any]:
    """Draw ``config.sample.n`` molecules from the prior: ``samples.csv`` and ``samples_grid.png``.

    A property-conditional model samples under ``config.sample.properties`` (see ``sample_conditions``).
    """
    model.eval()
    n, batch = config.sample.n, 1000
    targets = dict(config.sample.properties)
    condition = None
    if model.condition_dim or targets:
        train = data.load(paths.processed, "train").props
        condition = sample_conditions(model, model.input_spec, targets, n, generator=generator, train_properties=train)
    smiles: list[str] = []
    family = family_of(model)
    for start in range(0, n, batch):
        m = min(batch, n - start)
        c = None if condition is None else condition[start : start + m]
        # Sampled tokens (mean=False), not greedy ones: greedy decoding of prior draws repeats itself.
        tokens = family.sample(model, m, labels=c, temperature=config.sample.temperature, generator=generator, mean=False)
        smiles += tokens_to_smiles(tokens.cpu(), model.input_spec["vocab"])
    from vaeflow.modalities.molecule.data import novelty_set

    train = novelty_set(config.data, paths.processed)
    rows = property_rows(smiles, train)
    write_csv(rows, out_dir / "samples.csv")
    grid_image(smiles, out_dir / "samples_grid.png")
    valid = [r for r in rows if r["valid"]]
    canon = [r["canonical"] for r in valid]
    return {"n_samples": n, "valid": len(valid) / n, "unique": len(set(canon)) / max(len(canon), 1),
            "novel_vs_prepared_train": sum(bool(r["novel"]) for r in valid) / max(len(valid), 1)}


@torch.no_grad()
def reconstruction_metrics(model: Any, dataset: Any, *, n: int, batch_size: int = 256) -> dict[str, float]:
    """Greedy decoding from the posterior mean of the first ``n`` molecules of ``dataset``.

    Returns:
        ``recon_accuracy``: the share decoded to the same molecule (canonical SMILES);
        ``recon_tanimoto``: the mean Tanimoto similarity (MOSES's Morgan fingerprints) of each
        molecule to its own decoding; ``recon_tanimoto_shuffled``: the same against the next
        molecule's decoding, i.e. what a decoder that ignored z would score. While exact matches
        are rare, the gap between the last two says how much of a molecule z carries.
    """
    from rdkit import Chem
    from torch.utils.data import DataLoader, Subset

    from vaeflow.modalities.molecule.data import collate_graphs
    from vaeflow.modalities.molecule.metrics import fingerprints, tanimoto

    model.eval()
    device = next(model.parameters()).device
    subset = Subset(dataset, range(min(n, len(dataset))))
    decoded: list[str] = []
    for batch in DataLoader(subset, batch_size=batch_size, collate_fn=collate_graphs):
        batch = batch.to(device)
        condition = batch.properties if model.conditional else None
        decoded += decode_smiles(model, family_of(model).encode(model, batch, condition), greedy=True, condition=condition)
    if not decoded:
        return {"recon_accuracy": 0.0, "recon_tanimoto": 0.0, "recon_tanimoto_shuffled": 0.0}
    inputs = dataset.smiles[: len(decoded)]
    # An unparsable decoding gets an all-zero fingerprint: similarity 0 to anything (empty=0.0).
    fp_in, fp_out = (fingerprints([chem.mol_from_smiles(s) or Chem.Mol() for s in group]).astype(bool)
                     for group in (inputs, decoded))

    def mean_tanimoto(a: np.ndarray, b: np.ndarray) -> float:  # row i of a against row i of b
        return float(np.mean(tanimoto((a & b).sum(1), (a | b).sum(1), empty=0.0)))

    return {"recon_accuracy": sum(a == b for a, b in zip(inputs, decoded)) / len(decoded),
            "recon_tanimoto": mean_tanimoto(fp_in, fp_out),
            "recon_tanimoto_shuffled": mean_tanimoto(fp_in, np.roll(fp_out, 1, axis=0))}


def evaluation_figures(model: Any, dataset: Any, spec: dict[str, Any], out_dir: Path,
                       generator: torch.Generator) -> list[Path]:
    """Interpolation between two test molecules as a grid image."""
    if len(dataset) < 2:
        return []
    a, b = dataset.smiles[0], dataset.smiles[len(dataset) // 2]
    path = out_dir / "interpolation.png"
    grid_image([r["SMILES"] for r in interpolate(model, spec, a, b, steps=8)], path, n=8, per_row=8)
    return [path]


def property_plots(gen: dict[str, list[float]], ref: dict[str, Any], path: Path) -> None:
    """Histograms of logP, SA, QED and weight: generated vs reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    for ax, name in zip(axes, ("logP", "SA", "QED", "weight")):
        ax.hist(np.asarray(ref[name]["values"]), bins=50, density=True, alpha=0.5, label="test")
        ax.hist(np.asarray(gen[name]), bins=50, density=True, alpha=0.5, label="generated")
        ax.set_title(name)
    axes[0].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def evaluation_metrics(data: MoleculeData, model: Any, config: Any, paths: Any, out_dir: Path,
                       generator: torch.Generator, *, progress: bool = True) -> dict[str, float]:
    """MOSES metrics of the sample stage's molecules plus reconstruction accuracy; writes the metric
    table (``moses_metrics.csv``) and property histograms (``properties.png``) into ``out_dir``."""
    from vaeflow.modalities.molecule.data import DATASETS, MoleculeSource
    from vaeflow.modalities.molecule import metrics as M

    samples = Path(paths.samples) / "samples.csv"
    if not samples.is_file():
        raise FileNotFoundError(f"{samples} not found; run the sample stage first (dvc repro sample@molecule)")
    with open(samples) as f:
        rows = list(csv.DictReader(f))
    gen = [row["SMILES"] for row in rows]
    spec = data.input_spec(paths.processed)
    refs: dict[str, dict[str, Any]] = {}
    if config.data.source == "files":
        # Your own test split's statistics, computed once by prepare (a DVC output of it).
        from vaeflow.modalities.molecule.data import REFERENCE_STATS

        stats = Path(paths.processed) / REFERENCE_STATS
        if not stats.is_file():
            raise FileNotFoundError(f"{stats} not found; run the prepare stage again (dvc repro prepare@molecule)")
        refs["Test"] = M.load_reference(stats)
    else:
        source: MoleculeSource = DATASETS.get_or_raise(config.data.dataset)
        names = {"test": "Test", "test_scaffolds": "TestSF"}
        for split in ("test", "test_scaffolds"):
            if split in source.reference_stats:
                refs[names[split]] = M.load_reference(source.reference_stats[split]())
            elif split in spec["splits"]:
                refs[names[split]] = M.reference_statistics(data.load(paths.processed, split).smiles)
    from vaeflow.modalities.molecule.data import novelty_set

    train = novelty_set(config.data, paths.processed)
    metrics = M.metric_suite(gen, train=train, references=refs)
    test = data.load(paths.processed, "test")
    metrics |= reconstruction_metrics(model, test, n=config.evaluate.iwae_examples or len(test))
    with open(out_dir / "moses_metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "value"])
        w.writerows(metrics.items())
    valid = [r for r in rows if r["valid"] == "True"]
    if refs and valid:  # the sample stage computed the properties already
        gen_props = {name: [float(r[name]) for r in valid] for name in chem.PROPERTIES}
        property_plots(gen_props, next(iter(refs.values())), out_dir / "properties.png")
    return {M.mlflow_key(k): float(v) for k, v in metrics.items()}


class MoleculeTask(ModalityTask):
    """Samples as SMILES (CSV + grid), the MOSES metric suite and reconstruction from the latent mean."""

    data: MoleculeData

    def write_samples(self, model: Any, config: Any, paths: Any, out_dir: Path,
                      generator: torch.Generator) -> dict[str, Any]:
        return write_samples(self.data, model, config, paths, out_dir, generator)

    def evaluation_figures(self, model: Any, dataset: Any, spec: dict[str, Any], out_dir: Path,
                           generator: torch.Generator) -> list[Path]:
        return evaluation_figures(model, dataset, spec, out_dir, generator)

    def evaluation_metrics(self, model: Any, config: Any, paths: Any, out_dir: Path,
                           generator: torch.Generator, *, progress: bool = True) -> dict[str, float]:
        return evaluation_metrics(self.data, model, config, paths, out_dir, generator, progress=progress)


# --- latent-space operations ----------------------------------------------------------------------


def interpolate(model: Any, spec: dict[str, Any], start: str, end: str, *, steps: int = 8) -> list[dict[str, Any]]:
    """Greedy decodings along the straight line between two molecules' posterior means (and, for a
    property-conditional model, between their properties).

    Raises:
        ValueError: fewer than 2 steps, or a SMILES cannot be featurised.
    """
    if steps < 2:
        raise ValueError(f"steps must be ≥ 2 (the path includes both molecules), got {steps}")
    mu, cond = encode_smiles(model, [start, end], spec)  # (2, D), (2, P) or None
    t = torch.linspace(0, 1, steps, device=mu.device)[:, None]
    path = (1 - t) * mu[0] + t * mu[1]  # (steps, D)
    cond_path = None if cond is None else (1 - t) * cond[0] + t * cond[1]
    smiles = decode_smiles(model, path, greedy=True, condition=cond_path)
    return [{"t": round(float(ti), 4), **row} for ti, row in zip(t[:, 0].tolist(), property_rows(smiles, None))]


def optimize(model: Any, spec: dict[str, Any], start: str, *, prop: str = "QED", steps: int = 100, lr: float = 0.05,
             maximize: bool = True, prior_weight: float = 0.1, every: int = 10) -> list[dict[str, Any]]:
    """Gradient ascent on the property head's prediction from z (Gómez-Bombarelli et al. 2018),
    starting at ``start``'s posterior mean, with a standard-normal prior penalty that keeps z where
    the decoder was trained; the path is decoded greedily every ``every`` steps.

    Raises:
        ValueError: the model has no property head, ``prop`` is not one of its properties, or
            ``steps`` < 0 or ``every`` < 1.
    """
    if steps < 0 or every < 1:
        raise ValueError(f"steps must be ≥ 0 and every ≥ 1, got steps={steps}, every={every}")
    decoder = model.decoder
    if getattr(decoder, "property_head", None) is None:
        raise ValueError("this model has no property head; train with model.decoder.predict_properties: true")
    if prop not in spec["properties"]:
        raise ValueError(f"unknown property {prop!r}; use one of {spec['properties']}")
    j = spec["properties"].index(prop)
    mean, std = spec["property_mean"][j], spec["property_std"][j]
    sign = 1.0 if maximize else -1.0
    mu, cond = encode_smiles(model, [start], spec)  # a conditional model keeps the start's condition
    z = mu.clone().requires_grad_(True)  # (1, D)
    opt = torch.optim.Adam([z], lr=lr)
    rows = []
    for step in range(steps + 1):
        pred = decoder.predict_properties(z)[0, j]  # from z alone, also on a conditional model
        if step % every == 0 or step == steps:
            (smiles,) = decode_smiles(model, z.detach(), greedy=True, condition=cond)
            (row,) = property_rows([smiles], None)
            rows.append({"step": step, "predicted": round(pred.detach().item() * std + mean, 4), **row})
        if step == steps:
            break
        loss = -sign * pred + prior_weight * 0.5 * (z**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rows

"""The MOSES metric suite (Polykovskiy et al. 2020, https://arxiv.org/abs/1811.12823), reimplemented
on current RDKit / NumPy / pandas with the same definitions as molsets 0.3.1's ``moses.metrics``
(cross-checked against it in tests/test_molecule_metrics.py).

Generated molecules are SMILES; references are either MOSES's stored statistics for its test and
scaffold-test sets (``load_reference``) or statistics computed here from any list of SMILES
(``reference_statistics``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from rdkit.Chem.Scaffolds import MurckoScaffold

from vaeflow.modalities.molecule import chem

PROPERTY_FUNCS = {
    "logP": lambda m: chem.properties(m)[0],
    "QED": lambda m: chem.properties(m)[1],
    "SA": lambda m: chem.sascorer().calculateScore(m),
    "weight": lambda m: chem.properties(m)[3],
}


def _props(mols: Sequence[Chem.Mol]) -> dict[str, list[float]]:
    from rdkit.Chem import Crippen, Descriptors
    from rdkit.Chem.QED import qed

    sa = chem.sascorer().calculateScore
    return {"logP": [Crippen.MolLogP(m) for m in mols], "SA": [sa(m) for m in mols],
            "QED": [qed(m) for m in mols], "weight": [Descriptors.MolWt(m) for m in mols]}


# --- building blocks ---------------------------------------------------------------------------------

_MORGAN = None


# MOSES's Morgan fingerprint length.
FP_BITS = 1024


def fingerprints(mols: Sequence[Chem.Mol], radius: int = 2, n_bits: int = FP_BITS) -> np.ndarray:
    """Morgan bit vectors as used by MOSES. Shapes: (N, n_bits) uint8."""
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    out = np.zeros((len(mols), n_bits), dtype=np.uint8)
    for i, m in enumerate(mols):
        out[i] = gen.GetFingerprintAsNumPy(m)
    return out


def tanimoto(both: np.ndarray, either: np.ndarray, *, empty: float) -> np.ndarray:
    """Tanimoto similarity |a ∧ b| / |a ∨ b| from the bit counts of fingerprint pairs.

    Args:
        both: bits set in both fingerprints of each pair.
        either: bits set in either fingerprint of each pair.
        empty: the similarity of a pair of all-zero fingerprints, where the ratio is 0/0. MOSES's
            SNN and IntDiv count it as 1 (two empty molecules are alike); the reconstruction
            metrics count it as 0 (an unparsable decoding matches nothing).

    Shapes:
        both, either: same shape (any) → same shape
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(either > 0, both / np.where(either > 0, either, 1), empty)


def average_agg_tanimoto(ref: np.ndarray, gen: np.ndarray, *, agg: str = "max", p: int = 1,
                         batch_size: int = 5000, device: str = "cpu") -> float:
    """For each generated fingerprint, the max (SNN) or mean (IntDiv) Tanimoto similarity to ``ref``
    (MOSES ``average_agg_tanimoto``; an all-zero pair counts as similarity 1, see ``tanimoto``).

    Shapes:
        ref: (R, B); gen: (G, B) → scalar
    """
    agg_t = np.zeros(len(gen))
    total = np.zeros(len(gen))
    for j in range(0, len(ref), batch_size):
        x = torch.as_tensor(ref[j : j + batch_size], device=device).float()
        for i in range(0, len(gen), batch_size):
            y = torch.as_tensor(gen[i : i + batch_size], device=device).float().T  # (B, g)
            tp = x @ y  # (r, g) bits in both
            union = x.sum(1, keepdim=True) + y.sum(0, keepdim=True) - tp  # (r, g) bits in either
            jac = tanimoto(tp.cpu().numpy(), union.cpu().numpy(), empty=1.0)
            if p != 1:
                jac = jac**p
            if agg == "max":
                agg_t[i : i + y.shape[1]] = np.maximum(agg_t[i : i + y.shape[1]], jac.max(0))
            else:
                agg_t[i : i + y.shape[1]] += jac.sum(0)
                total[i : i + y.shape[1]] += jac.shape[0]
    if agg == "mean":
        agg_t /= total
    if p != 1:
        agg_t = agg_t ** (1 / p)
    return float(np.mean(agg_t))


def fragments(mols: Sequence[Chem.Mol]) -> Counter:
    """BRICS fragments (as canonical SMILES) counted over ``mols``."""
    out: Counter = Counter()
    for m in mols:
        out.update(Chem.MolToSmiles(AllChem.FragmentOnBRICSBonds(m)).split("."))
    return out


def scaffold(mol: Chem.Mol, min_rings: int = 2) -> str | None:
    """Bemis–Murcko scaffold SMILES, None when it has fewer than ``min_rings`` rings (MOSES rule)."""
    try:
        s = MurckoScaffold.GetScaffoldForMol(mol)
    except (ValueError, RuntimeError):
        return None
    smiles = Chem.MolToSmiles(s)
    if smiles == "" or s.GetRingInfo().NumRings() < min_rings:
        return None
    return smiles


def scaffolds(mols: Sequence[Chem.Mol]) -> Counter:
    out = Counter(scaffold(m) for m in mols)
    out.pop(None, None)
    return out


def cos_similarity(ref: Counter, gen: Counter) -> float:
    """Cosine similarity of two count dictionaries (absent keys count 0); NaN if either is empty."""
    if not ref or not gen:
        return float("nan")
    keys = sorted(set(ref) | set(gen))
    r = np.array([ref.get(k, 0) for k in keys], dtype=np.float64)
    g = np.array([gen.get(k, 0) for k in keys], dtype=np.float64)
    return float(r @ g / np.linalg.norm(r) / np.linalg.norm(g))


@cache
def _filters() -> list[Chem.Mol]:
    """MOSES's MCF + PAINS SMARTS (files shipped in molsets next to its metric code)."""
    import csv

    folder = chem.molsets_data_dir().parent.parent / "metrics"
    with open(folder / "mcf.csv") as f:
        mcf = [row["smarts"] for row in csv.DictReader(f)]
    with open(folder / "wehi_pains.csv") as f:
        pains = [row[0] for row in csv.reader(f)]
    # molsets concatenates with pandas' append(sort=True): column order does not affect the SMARTS list.
    return [Chem.MolFromSmarts(s) for s in mcf + pains]


def passes_filters(mol: Chem.Mol, allowed: frozenset[str] = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})) -> bool:
    """MOSES filters: no ring of ≥ 8 atoms, no charge, allowed atoms only, no MCF/PAINS match."""
    if mol is None:
        return False
    rings = mol.GetRingInfo()
    if rings.NumRings() and any(len(r) >= 8 for r in rings.AtomRings()):
        return False
    if any(a.GetFormalCharge() != 0 for a in mol.GetAtoms()):
        return False
    if any(a.GetSymbol() not in allowed for a in mol.GetAtoms()):
        return False
    h_mol = Chem.AddHs(mol)
    if any(h_mol.HasSubstructMatch(s) for s in _filters()):
        return False
    smiles = Chem.MolToSmiles(mol, isomericSmiles=False)
    return bool(smiles) and Chem.MolFromSmiles(smiles) is not None


# Molecules per ChemNet call. ChemNet's activations peak at about 350 MB for a batch of 512 on the
# CPU and 110 MB for 128, which is 13 % slower (5,000 MOSES test molecules); the statistics do not
# depend on it.
FCD_BATCH = 128


def _fcd(device: str = "cpu", batch_size: int = FCD_BATCH) -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fcd_torch warns under SciPy ≥ 1.17 about sqrtm's disp argument
        from fcd_torch import FCD

    return FCD(device=device, n_jobs=1, batch_size=batch_size)


def fcd_statistics(smiles: Sequence[str], device: str = "cpu", batch_size: int = FCD_BATCH) -> dict[str, np.ndarray]:
    """Mean and covariance of ChemNet activations (Preuer et al. 2018), as fcd_torch's ``precalc``
    computes them, in memory that does not grow with the number of molecules.

    fcd_torch's own loop keeps every batch's activations as a view of ChemNet's whole LSTM output
    (about 150 KB per molecule: 5.8 GB for 30,000). Here one ChemNet call per batch, and the batch's
    activations are folded into running sums (float64, centred on the first batch's mean), so no
    per-molecule array is kept: np.cov of all activations at once would hold 6 KB per molecule
    (0.6 GB for a 100,000-molecule test split).

    Shapes: mu (512,), sigma (512, 512).
    """
    fcd, smiles = _fcd(device, batch_size), list(smiles)
    if len(smiles) < 2:
        return fcd.precalc(smiles)  # fcd_torch's warning and empty statistics
    n, shift, total, outer = 0, None, 0.0, 0.0
    for i in range(0, len(smiles), batch_size):
        acts = fcd.get_predictions(smiles[i : i + batch_size]).astype(np.float64)  # (B, 512)
        shift = acts.mean(0) if shift is None else shift
        centred = acts - shift
        n, total, outer = n + len(acts), total + centred.sum(0), outer + centred.T @ centred
    mean = total / n  # of the centred activations
    return {"mu": shift + mean, "sigma": (outer - n * np.outer(mean, mean)) / (n - 1)}


def fcd_distance(ref: dict[str, np.ndarray], gen: dict[str, np.ndarray]) -> float:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(_fcd().metric(ref, gen))


# --- reference statistics ----------------------------------------------------------------------------


# Molecules parsed at a time for the reference statistics: an RDKit Mol held in a list costs about
# 27 KB (measured on MOSES molecules), so a whole test split of Mols at once would add 2.7 KB per
# molecule of a 10%-test file to prepare's peak.
REFERENCE_CHUNK = 1000


def reference_statistics(smiles: Sequence[str], device: str = "cpu", chunk_size: int = REFERENCE_CHUNK) -> dict[str, Any]:
    """The statistics MOSES stores for a reference set: FCD, SNN, Frag, Scaf and property values.

    The RDKit molecules are parsed ``chunk_size`` at a time, so memory does not grow with the set
    beyond the statistics themselves; the result does not depend on ``chunk_size`` (counts add up,
    and keys keep their first-seen order).
    """
    fps = np.zeros((len(smiles), FP_BITS), dtype=np.uint8)  # filled in place: no second copy to concatenate
    n_fps = 0
    frag: Counter = Counter()
    scaf: Counter = Counter()
    props: dict[str, list[float]] = _props([])
    for i in range(0, len(smiles), chunk_size):
        mols = [m for m in (chem.mol_from_smiles(s) for s in smiles[i : i + chunk_size]) if m is not None]
        fps[n_fps : n_fps + len(mols)] = fingerprints(mols)
        n_fps += len(mols)
        frag.update(fragments(mols))
        scaf.update(scaffolds(mols))
        for k, v in _props(mols).items():
            props[k].extend(v)
        del mols
    return {
        "FCD": fcd_statistics(list(smiles), device),
        "SNN": {"fps": fps if n_fps == len(fps) else fps[:n_fps].copy()},
        "Frag": {"frag": frag},
        "Scaf": {"scaf": scaf},
        **{k: {"values": v} for k, v in props.items()},
    }


def load_reference(path: Path) -> dict[str, Any]:
    """MOSES's stored reference statistics (``test_stats.npz``: a pickled dict written by molsets)."""
    return np.load(path, allow_pickle=True)["stats"].item()


# --- the suite -------------------------------------------------------------------------------------


def metric_suite(
    gen: Sequence[str],
    *,
    train: set[str] | None,
    references: dict[str, dict[str, Any]],
    ks: Sequence[int] = (1000, 10000),
    device: str = "cpu",
) -> dict[str, float]:
    """MOSES ``get_all_metrics`` on generated SMILES.

    Args:
        gen: generated SMILES (invalid ones included: they count against ``valid``).
        train: canonical training SMILES for novelty; None skips novelty.
        references: name (e.g. ``Test``, ``TestSF``) → reference statistics. FCD, SNN, Frag and Scaf
            are computed against each; property Wasserstein distances against the first.
        ks: the k of unique@k; a k larger than the valid molecules is computed on all of them.

    Returns:
        ``valid``, ``unique@k``, ``FCD/<ref>``, ``SNN/<ref>``, ``Frag/<ref>``, ``Scaf/<ref>``,
        ``IntDiv``, ``IntDiv2``, ``Filters``, ``logP``, ``SA``, ``QED``, ``weight`` (W1 distances) and
        ``Novelty`` — MOSES's names.
    """
    chem.quiet_rdkit()
    parsed = (chem.mol_from_smiles(s) for s in gen)  # one Mol at a time: a list of 30,000 holds 0.83 GB
    canon = [Chem.MolToSmiles(m) for m in parsed if m is not None]
    out: dict[str, float] = {"valid": 1 - (len(gen) - len(canon)) / max(len(gen), 1)}
    for k in ks:
        first = canon[:k]
        out[f"unique@{k // 1000}k" if k % 1000 == 0 else f"unique@{k}"] = len(set(first)) / max(len(first), 1)
    if not canon:
        return out
    mols = [chem.mol_from_smiles(s) for s in canon]  # MOSES re-parses the canonical forms
    fps = fingerprints(mols)
    pgen_fcd = fcd_statistics(canon, device)
    frag, scaf = fragments(mols), scaffolds(mols)
    for name, ref in references.items():
        out[f"FCD/{name}"] = fcd_distance(ref["FCD"], pgen_fcd)
        out[f"SNN/{name}"] = average_agg_tanimoto(ref["SNN"]["fps"], fps, device=device)
        out[f"Frag/{name}"] = cos_similarity(ref["Frag"]["frag"], frag)
        out[f"Scaf/{name}"] = cos_similarity(ref["Scaf"]["scaf"], scaf)
    out["IntDiv"] = 1 - average_agg_tanimoto(fps, fps, agg="mean", device=device)
    out["IntDiv2"] = 1 - average_agg_tanimoto(fps, fps, agg="mean", p=2, device=device)
    out["Filters"] = float(np.mean([passes_filters(m) for m in mols]))
    from scipy.stats import wasserstein_distance

    first_ref = next(iter(references.values()), None)
    if first_ref is not None:
        props = _props(mols)
        for name in ("logP", "SA", "QED", "weight"):
            out[name] = float(wasserstein_distance(first_ref[name]["values"], props[name]))
    if train is not None:
        unique = set(canon)
        out["Novelty"] = len(unique - train) / len(unique)
    return out


def mlflow_key(name: str) -> str:
    """A MOSES metric name as an MLflow/DVC-friendly key: ``unique@1k`` → ``unique_1k``, ``FCD/Test`` → ``FCD_Test``."""
    return name.replace("@", "_").replace("/", "_")

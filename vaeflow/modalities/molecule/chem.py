"""RDKit helpers shared by molecule data preparation, sampling and metrics.

Properties follow MOSES (Polykovskiy et al. 2020, https://arxiv.org/abs/1811.12823): Crippen logP,
QED, the synthetic-accessibility score of Ertl & Schuffenhauer 2009 (RDKit Contrib ``sascorer``)
and the average molecular weight.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from rdkit import Chem, RDConfig, RDLogger
from rdkit.Chem import QED

# The properties stored with every molecule (and predicted by the decoder's property head), in order.
PROPERTIES = ("logP", "QED", "SA", "weight")

MOLSETS_HINT = "pip install --no-deps molsets"


@functools.cache
def sascorer() -> Any:
    """RDKit Contrib's SA_Score module (shipped in the rdkit wheel, not importable as a package)."""
    path = Path(RDConfig.RDContribDir) / "SA_Score" / "sascorer.py"
    spec = importlib.util.spec_from_file_location("rdkit_contrib_sascorer", path)
    if spec is None or not path.is_file():
        raise FileNotFoundError(f"RDKit's Contrib SA_Score not found at {path}; reinstall rdkit (pip install rdkit)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def quiet_rdkit() -> None:
    """Silence RDKit's per-molecule warnings (bad input is counted and quarantined instead)."""
    RDLogger.DisableLog("rdApp.*")


def mol_from_smiles(smiles: str) -> Chem.Mol | None:
    """Parse and sanitise; None for an empty or unparsable SMILES (the MOSES ``get_mol`` rule)."""
    if not smiles:
        return None
    # MolFromSmiles sanitises (and returns None when that fails): MOSES's extra SanitizeMol is a no-op.
    return Chem.MolFromSmiles(smiles)


def canonical(smiles: str) -> str | None:
    """RDKit canonical SMILES, None when invalid."""
    mol = mol_from_smiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol)


def properties(mol: Chem.Mol) -> tuple[float, float, float, float]:
    """(logP, QED, SA, weight) of a sanitised molecule, in the order of ``PROPERTIES``."""
    # QED's descriptor set already holds Crippen logP and the average molecular weight: compute it once.
    props = QED.properties(mol)
    return (props.ALOGP, QED.qed(mol, qedProperties=props), sascorer().calculateScore(mol), props.MW)


def molsets_data_dir() -> Path:
    """``<site-packages>/moses/dataset/data`` of the molsets wheel, found without importing ``moses``.

    Raises:
        FileNotFoundError: molsets is not installed; the message gives the pip command.
    """
    spec = importlib.util.find_spec("moses")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the MOSES data set ships in the PyPI package molsets; install it with: {MOLSETS_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset" / "data"
    if not (folder / "train.csv.gz").is_file():
        raise FileNotFoundError(f"{folder} holds no MOSES data; reinstall it with: {MOLSETS_HINT} --force-reinstall")
    return folder


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

"""vaeflow's MOSES metrics against molsets 0.3.1's own metric code on the same inputs (to 1e-3).

molsets does not import on current RDKit / NumPy / pandas as published; ``_molsets_metrics`` loads it
with three compatibility shims that touch no metric definition: ``rdkit.six.iteritems`` (removed
from RDKit), ``numpy.NaN`` (removed in NumPy 2) and ``DataFrame.append`` (removed in pandas 2, used
once to concatenate the MCF and PAINS filter tables).
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest

from vaeflow.modalities.molecule import chem
from vaeflow.modalities.molecule import metrics as M

if importlib.util.find_spec("moses") is None:
    pytest.skip(f"molsets is not installed: {chem.MOLSETS_HINT}", allow_module_level=True)

# A fixed set: drug-like molecules from MOSES test, a duplicate, an invalid SMILES, a charged one.
GEN = [
    "CCCS(=O)c1ccc2[nH]c(=NC(=O)OC)[nH]c2c1", "CC(C)(C)C(=O)C(Oc1ccc(Cl)cc1)n1ccnc1",
    "Cc1c(Cl)cccc1Nc1ncccc1C(=O)OCC(O)CO", "Cn1cnc2c1c(=O)n(CC(O)CO)c(=O)n2C", "CC1Oc2ccc(Cl)cc2N(CC(O)CO)C1=O",
    "O=C(O)c1ccccc1O", "c1ccc2ccccc2c1", "CC(=O)Nc1ccc(O)cc1", "CC(=O)Nc1ccc(O)cc1", "C[N+](=O)[O-]",
    "not_a_smiles", "c1ccc(-c2ccc3ccccc3c2)cc1", "O=C1CCCN1c1ccc2c(c1)OCO2", "CCN(CC)C(=O)c1ccc2c(c1)C1CCCN1C2",
    "Clc1ccc(Br)cc1", "OCC1OC(O)C(O)C(O)C1O", "CCOC(=O)c1ccc(N)cc1", "C1CCC2(CC1)OCCO2",
]
REF = [
    "CC1CC(C)CN(C(=O)c2cc(-c3ccco3)nc3ccccc23)C1", "COc1ccc(C(=O)NCc2ccco2)cc1OC", "CC(C)Oc1ccc(C(=O)Nc2ccccn2)cc1",
    "O=C(Nc1ccc2c(c1)OCO2)c1ccc(Cl)cc1", "CCOC(=O)C1=C(C)NC(=O)NC1c1ccccc1", "Cc1ccc(S(=O)(=O)N2CCCC2)cc1",
    "CN1CCN(c2ccc(C(=O)O)cc2)CC1", "O=C(O)c1ccccc1O", "c1ccc2[nH]ccc2c1", "CC(=O)Nc1ccc(O)cc1",
    "COc1cc2c(cc1OC)C1CC(=O)CCN1CC2", "Cc1cc(C)n(-c2ccc(C(=O)NC3CCCC3)cc2)n1",
]


@pytest.fixture(scope="module")
def moses():
    six = types.ModuleType("rdkit.six")
    six.iteritems = lambda d: iter(d.items())
    sys.modules.setdefault("rdkit.six", six)
    import pandas as pd

    if not hasattr(np, "NaN"):
        np.NaN = np.nan
    if not hasattr(pd.DataFrame, "append"):
        pd.DataFrame.append = lambda self, other, sort=False: pd.concat([self, other], sort=sort)
    import moses.metrics.metrics as mm
    import moses.metrics.utils as mu

    return mm, mu


def test_suite_matches_molsets_get_all_metrics(moses):
    mm, _ = moses
    ref_stats = mm.compute_intermediate_statistics(REF, n_jobs=1)
    expected = mm.get_all_metrics(GEN, k=[5, 10], test=REF, ptest=ref_stats, test_scaffolds=REF,
                                  ptest_scaffolds=ref_stats, train=REF)
    ours = M.metric_suite(GEN, train=set(REF), references={"Test": M.reference_statistics(REF)}, ks=(5, 10))
    assert len(expected) > 15
    for key, value in expected.items():
        if key.endswith("/TestSF"):
            continue  # the same reference again
        name = {"unique@5": "unique@5", "unique@10": "unique@10"}.get(key, key)
        assert ours[name] == pytest.approx(value, abs=1e-3, nan_ok=True), key


def test_stored_moses_statistics_give_the_same_fcd_and_properties(moses):
    """Against MOSES's shipped test statistics (as the evaluate stage uses them)."""
    mm, _ = moses
    stats = M.load_reference(chem.molsets_data_dir() / "test_stats.npz")
    gen = [s for s in GEN if chem.mol_from_smiles(s) is not None]
    canon = [chem.canonical(s) for s in gen]
    mols = [chem.mol_from_smiles(s) for s in canon]
    ours = M.metric_suite(gen, train=None, references={"Test": stats}, ks=(10,))
    assert ours["FCD/Test"] == pytest.approx(mm.FCDMetric(n_jobs=1)(gen=canon, pref=stats["FCD"]), abs=1e-3)
    assert ours["SNN/Test"] == pytest.approx(mm.SNNMetric()(gen=mols, pref=stats["SNN"]), abs=1e-3)
    assert ours["Frag/Test"] == pytest.approx(mm.FragMetric()(gen=mols, pref=stats["Frag"]), abs=1e-3)
    for name, func in (("logP", mm.logP), ("SA", mm.SA), ("QED", mm.QED), ("weight", mm.weight)):
        assert ours[name] == pytest.approx(mm.WassersteinMetric(func)(gen=mols, pref=stats[name]), abs=1e-3), name


def test_fcd_statistics_gathered_batch_by_batch_equal_fcd_torchs_own():
    """fcd_statistics calls ChemNet one batch at a time and keeps running sums (memory that does not
    grow with the sample count); across batch boundaries, with a last partial batch, it gives
    fcd_torch's statistics: the covariance to float64 rounding, the mean to float32's (fcd_torch
    averages in float32), and the same FCD."""
    smiles = [s for s in GEN + REF if chem.mol_from_smiles(s) is not None]
    ours, theirs = M.fcd_statistics(smiles, batch_size=8), M._fcd(batch_size=8).precalc(smiles)
    assert len(smiles) % 8 and ours["sigma"].shape == (512, 512)
    np.testing.assert_allclose(ours["mu"], theirs["mu"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours["sigma"], theirs["sigma"], rtol=0, atol=1e-12)
    other = M.fcd_statistics(smiles[:20], batch_size=8)
    assert M.fcd_distance(ours, other) == pytest.approx(M.fcd_distance(theirs, other), abs=1e-6)

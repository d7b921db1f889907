"""Your own molecules (data.source: files) on real RDKit: every format, the column options, bad
records and their counts, one-line errors, standardisation, repeats across splits, the vocabulary
of the training split, measured properties through train → sample → optimize, and the evaluation
reference of your test split."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rdkit import Chem

from vaeflow import stages
from vaeflow.modalities.molecule import data as mol
from vaeflow.modalities.molecule.config import MoleculeDataConfig, StandardizeConfig
from tests.conftest import ROOT, tiny_config

FILES = ROOT / "configs/molecule/files.yaml"
EXAMPLE = ROOT / "examples/molecule/chembl2321810.csv"

# 40 distinct small molecules (C, N, O only, ≤ 9 heavy atoms) and a made-up measured value each.
SMILES = ["CCO", "CCN", "CCC", "CCCO", "CCCN", "OCCO", "NCCN", "OCCN", "CC(C)C", "CC(C)O", "CC(C)N", "CCCCC",
          "CCCCO", "CCCCN", "OCCCO", "NCCCN", "CC(O)CO", "CC(N)CN", "CCOC", "CCNC", "COC", "CNC", "CCOCC",
          "CCNCC", "CC(C)(C)C", "CC(C)(C)O", "c1ccccc1", "c1ccccc1O", "c1ccccc1N", "c1ccncc1", "Cc1ccccc1",
          "CC(=O)O", "CC(=O)N", "CC=O", "C1CCCCC1", "C1CCOC1", "C1CCNC1", "OC1CCCC1", "NC1CCCCC1", "CC#N"]


def canon(smiles):
    return [Chem.CanonSmiles(s) for s in smiles]


def frame(n=len(SMILES)):
    return pd.DataFrame({"smiles": SMILES[:n], "name": [f"m{i}" for i in range(n)],
                         "pIC50": np.round(np.linspace(4, 9, n), 2)})


def write(path: Path, df: pd.DataFrame) -> Path:
    name = path.name
    if name.endswith((".smi", ".smi.gz")):
        text = "".join(f"{s} {n}\n" for s, n in zip(df["smiles"], df["name"]))
        path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    elif name.endswith(".parquet"):
        df.to_parquet(path)
    elif name.endswith((".sdf", ".sdf.gz")):
        plain = path.with_name(name.removesuffix(".gz")) if name.endswith(".gz") else path
        writer = Chem.SDWriter(str(plain))
        for s, n, v in zip(df["smiles"], df["name"], df["pIC50"]):
            m = Chem.MolFromSmiles(s)
            m.SetProp("_Name", n)
            m.SetProp("pIC50", str(v))
            writer.write(m)
        writer.close()
        if plain != path:
            path.write_bytes(gzip.compress(plain.read_bytes()))
            plain.unlink()
    else:
        df.to_csv(path, sep="\t" if ".tsv" in name else ",", index=False,
                  compression="gzip" if name.endswith(".gz") else None)
    return path


def prepare(path, out, **options):
    config = MoleculeDataConfig(source="files", path=str(path), **options)
    return mol.MoleculeData().prepare(config, 0, out, progress=False)


def rejects(out):
    with open(out / "rejects.csv") as f:
        return list(csv.DictReader(f))


def prepared_smiles(out):
    return {split: torch.load(out / f"{split}.pt", weights_only=True)["smiles"] for split in ("train", "val", "test")}


@pytest.mark.parametrize("name", ["mols.smi", "mols.csv", "mols.csv.gz", "mols.tsv", "mols.parquet", "mols.sdf", "mols.sdf.gz"])
def test_every_format_gives_the_same_molecules_and_splits(name, tmp_path):
    df = frame()
    path = write(tmp_path / name, df)
    smi = name.startswith("mols.smi")
    options = {} if smi else {"property_columns": ["pIC50"]}
    if not smi and not name.startswith("mols.sdf"):
        options["id_column"] = "name"
    counts = prepare(path, tmp_path / "out", val_fraction=0.2, test_fraction=0.2, **options)
    assert counts["duplicates"] == 0
    splits = prepared_smiles(tmp_path / "out")
    # Only what the small training split cannot represent is rejected (a token or size only val/test has).
    rows = rejects(tmp_path / "out")
    assert counts["rejected"] == len(rows) <= 4
    assert all(r["split"] in ("val", "test") and "training" in r["reason"] for r in rows), rows
    assert sorted([s for v in splits.values() for s in v] + [r["smiles"] for r in rows]) == sorted(canon(SMILES))
    # The seeded split depends on the molecule alone, so every format splits alike.
    reference = {s: mol.hash_split(s, 0, 0.2, 0.2) for s in canon(SMILES)}
    assert all(reference[s] == split for split, v in splits.items() for s in v)
    spec = json.loads((tmp_path / "out/spec.json").read_text())
    assert spec["properties"] == ["logP", "QED", "SA", "weight", *([] if smi else ["pIC50"])]
    if not smi:
        train = torch.load(tmp_path / "out/train.pt", weights_only=True)
        values = dict(zip(canon(df["smiles"]), df["pIC50"]))
        assert train["properties"][:, 4].tolist() == pytest.approx([values[s] for s in train["smiles"]], abs=1e-5)
        names = dict(zip(canon(df["smiles"]), df["name"]))
        assert train["ids"] == [names[s] for s in train["smiles"]]  # the ID column, or the SDF title


def test_quoted_fields_ragged_rows_and_every_bad_record_class(tmp_path):
    path = tmp_path / "mols.csv"
    path.write_text(
        "smiles,id,pIC50,split\n"
        "CCO,m1,5.0,train\n"
        '"C(C)(C)",m2,6,train\n'          # quoted: accepted as CCC
        "CCC,extra,column\n"               # ragged: 3 fields
        "c1ccccc1O,m3,7.5,test\n"          # 7 heavy atoms > train's largest (6)
        "CC(=O)[O-].[Na+],m4,6.1,train\n"  # salt: largest fragment, neutralised
        "CCN,m5,,train\n"                  # missing value
        "CCCl,m6,abc,val\n"                # non-numeric value
        "CCBr,m7,4,holdout\n"              # unknown split
        "CCO,m8,5.1,test\n"                # repeat of m1: test keeps it
        "C[Pt]C,m9,3,train\n"              # element outside data.elements
        "OCCO,m10,3,val\n"
        "CCS,m11,3,test\n"                 # S is not in the training split
        "C1CC,m12,3,train\n"               # unparsable
        "c1ccncc1,m13,4,train\n")
    counts = prepare(path, tmp_path / "out", id_column="id", split_column="split", property_columns=["pIC50"])
    rows = rejects(tmp_path / "out")
    by_line = {int(r["line"]): (r["id"], r["reason"]) for r in rows}
    assert by_line == {
        4: ("", "ragged row: 3 field(s), the header has 4"),
        5: ("m3", "7 heavy atoms > max_atoms 6 (the training split's largest)"),
        7: ("m5", "missing pIC50 value"),
        8: ("m6", "non-numeric pIC50 value 'abc'"),
        9: ("m7", "unknown split value 'holdout' (use train, val or test)"),
        11: ("m9", "unsupported element Pt"),
        13: ("m11", "element S not in the training split"),
        14: ("m12", "unparsable SMILES"),
    }
    assert counts["rejected"] == len(rows) == 8
    assert {k: v for k, v in counts.items() if k.startswith("rejected_")} == {
        "rejected_ragged": 1, "rejected_too_large": 1, "rejected_property": 2, "rejected_split": 1,
        "rejected_element": 1, "rejected_element_not_in_train": 1, "rejected_unparsable": 1}
    assert counts["duplicates"] == 1 and counts["standardized_largest_fragment"] == counts["standardized_neutralize"] == 1
    splits = prepared_smiles(tmp_path / "out")
    assert splits == {"train": ["CCC", "CC(=O)O", "c1ccncc1"], "val": ["OCCO"], "test": ["CCO"]}
    with open(tmp_path / "out/duplicates.csv") as f:
        assert list(csv.DictReader(f)) == [{"split": "train", "line": "2", "id": "m1", "smiles": "CCO", "kept_in": "test"}]
    # Vocabulary and limit from the training split.
    spec = json.loads((tmp_path / "out/spec.json").read_text())
    assert spec["elements"] == ["C", "N", "O"] and spec["max_atoms"] == 6
    assert spec["atom_feature_sizes"][0] == 3
    test = torch.load(tmp_path / "out/test.pt", weights_only=True)
    assert int(test["atoms"][:, 0].max()) < 3  # element indices remapped to the training vocabulary
    assert counts["n_train"] + counts["n_val"] + counts["n_test"] + counts["rejected"] + counts["duplicates"] == 14


def test_standardisation_steps_each_an_option_with_counts(tmp_path):
    salts = ["CC(=O)[O-].[Na+]", "C[NH3+].[Cl-]", "Oc1ccccn1", "CC(=O)[O-]"] + SMILES[:20]
    path = write(tmp_path / "mols.csv", pd.DataFrame({"smiles": salts}))
    on = prepare(path, tmp_path / "on", standardize=StandardizeConfig(tautomer=True))
    assert on["standardized_largest_fragment"] == 2  # the two salts
    assert on["standardized_neutralize"] == 3  # acetate (twice, then a repeat of acetic acid) and methylammonium
    assert on["standardized_tautomer"] >= 1  # 2-hydroxypyridine → 2-pyridone
    assert on["duplicates"] == 1 and on["rejected"] == 0
    every = {s for v in prepared_smiles(tmp_path / "on").values() for s in v}
    assert {"CC(=O)O", "CN", "O=c1cccc[nH]1"} <= every
    off = prepare(path, tmp_path / "off", standardize=StandardizeConfig(largest_fragment=False, neutralize=False))
    assert not any(k.startswith("standardized_") for k in off)
    assert off["rejected_fragments"] == 2 and off["duplicates"] == 0  # salts rejected, acetate kept charged
    assert "CC(=O)[O-]" in {s for v in prepared_smiles(tmp_path / "off").values() for s in v}


def test_a_repeat_in_the_moses_path_stays_in_test(tmp_path, monkeypatch):
    """A data set whose train file repeats a test molecule (CCO) and itself: test keeps CCO whole,
    train keeps one copy of each of its own molecules."""
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("SMILES\n" + "\n".join(["CCO", "CCO", *SMILES[1:18], *SMILES[26:], "CCN"]) + "\n")
    test.write_text("SMILES\n" + "\n".join(["CCO", *SMILES[18:26]]) + "\n")
    monkeypatch.setitem(mol.DATASETS, "crafted", mol.MoleculeSource(
        elements=("C", "N", "O"), max_atoms=9, official={"train": lambda: train, "test": lambda: test}))
    counts = mol.MoleculeData().prepare(MoleculeDataConfig(dataset="crafted", val_size=4), 0, tmp_path / "out", progress=False)
    splits = {k: torch.load(tmp_path / f"out/{k}.pt", weights_only=True)["smiles"] for k in ("train", "val", "test")}
    assert "CCO" in splits["test"] and len(splits["test"]) == 1 + len(SMILES[18:26])
    assert "CCO" not in splits["train"] + splits["val"]
    everything = [s for v in splits.values() for s in v]
    assert len(everything) == len(set(everything))
    assert counts["duplicates"] == 3 and counts["rejected"] == 0  # CCO twice, CCN once


def _one_line_error(argv, capsys, tmp_path):
    from vaeflow import cli

    code = cli.main(["prepare", "--modality", "molecule", "--preset", str(FILES), "--root", str(tmp_path), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("vaeflow prepare: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "data/processed/molecule").exists()  # nothing half-written
    return err


@pytest.mark.parametrize("content, name, message", [
    (None, "absent.csv", "no such file"),
    ("", "empty.csv", "the file is empty"),
    ("smiles\tpIC50\n", "x.xlsx", "unknown molecule file format"),
    ("SMILES,value\nCCO,1\n", "mols.csv", "no column 'smiles'"),
    ("smiles,pIC50\nCCO,1\n", "mols.smi", "a .smi file has no columns"),
    ("not a parquet file", "mols.parquet", "cannot read it as PARQUET"),
    ("smiles,pIC50\n" + "".join(f"{s},{i}\n" for i, s in enumerate(["C1CC", "xyz", "C[Pt]"] * 4)), "bad.csv",
     "no usable molecule in the train split"),
])
def test_an_unreadable_file_stops_prepare_in_one_line(content, name, message, tmp_path, capsys):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    err = _one_line_error(["--set", f"data.path={path}", "--set", "data.id_column=null"], capsys, tmp_path)
    assert message in err and (name in err or "split" in err)


def test_reference_statistics_of_your_test_split_and_novelty_against_your_train(tmp_path):
    from vaeflow.modalities.molecule import metrics as M

    path = write(tmp_path / "mols.csv", frame())
    prepare(path, tmp_path / "out", property_columns=["pIC50"], val_fraction=0.2, test_fraction=0.3)
    splits = prepared_smiles(tmp_path / "out")
    stored = M.load_reference(tmp_path / "out" / mol.REFERENCE_STATS)
    fresh = M.reference_statistics(splits["test"])
    assert np.array_equal(stored["SNN"]["fps"], fresh["SNN"]["fps"]) and len(stored["SNN"]["fps"]) == len(splits["test"])
    assert stored["Frag"]["frag"] == fresh["Frag"]["frag"] and stored["Scaf"]["scaf"] == fresh["Scaf"]["scaf"]
    assert np.allclose(stored["FCD"]["mu"], fresh["FCD"]["mu"]) and stored["logP"]["values"] == fresh["logP"]["values"]
    config = MoleculeDataConfig(source="files", path=str(path))
    assert mol.novelty_set(config, tmp_path / "out") == frozenset(splits["train"])


def test_reference_statistics_are_the_same_whatever_the_chunk_of_parsed_molecules():
    """The reference statistics parse the test molecules a chunk at a time (bounded memory); the
    result is the one of parsing all at once, key order included, for any chunk size."""
    from vaeflow.modalities.molecule import metrics as M

    smiles = canon(SMILES)
    whole = M.reference_statistics(smiles, chunk_size=len(smiles))
    for chunk_size in (1, 7):
        chunked = M.reference_statistics(smiles, chunk_size=chunk_size)
        assert list(chunked) == list(whole)
        assert np.array_equal(chunked["SNN"]["fps"], whole["SNN"]["fps"])
        for key, field in (("Frag", "frag"), ("Scaf", "scaf")):
            assert chunked[key][field] == whole[key][field] and list(chunked[key][field]) == list(whole[key][field])
        assert np.array_equal(chunked["FCD"]["mu"], whole["FCD"]["mu"])
        assert np.array_equal(chunked["FCD"]["sigma"], whole["FCD"]["sigma"])
        assert all(chunked[k]["values"] == whole[k]["values"] for k in ("logP", "SA", "QED", "weight"))


# About 30–60 s (Ray fits, sample, evaluate, optimize): -m slow, so the default suite stays within
# 10 minutes on 2 cores.
@pytest.mark.slow
def test_measured_property_conditions_sampling_and_optimize_end_to_end(tmp_path, ray_cluster, capsys):
    """The example ChEMBL series (first 300 rows) through prepare → train (Ray, 2 workers) → sample
    with sample.properties {pIC50: 7.0} → evaluate, then `vaeflow optimize --property pIC50`."""
    from vaeflow import cli
    from vaeflow.modalities.molecule import task as ops
    from vaeflow.training import checkpoint

    rows = EXAMPLE.read_text().splitlines()[:301]
    (tmp_path / "data/raw/molecule").mkdir(parents=True)
    (tmp_path / "data/raw/molecule/chembl.csv").write_text("\n".join(rows) + "\n")
    overrides = [f"data.path={tmp_path}/data/raw/molecule/chembl.csv", "data.val_fraction=0.15", "data.test_fraction=0.15",
                 "model.latent_dim=8", "model.encoder.hidden=16", "model.encoder.layers=2", "model.decoder.hidden=32",
                 "model.decoder.embed=16", "train.epochs=1", "train.batch_size=32", "sample.n=40",
                 "sample.properties={pIC50: 7.0}", "evaluate.iwae_k=2", "evaluate.iwae_examples=8", "evaluate.batch_size=32"]
    config = tiny_config(tmp_path, *overrides, preset=FILES)
    paths = stages.Paths.for_modality("molecule", tmp_path)
    counts = stages.prepare(config, paths, progress=False)
    assert counts["n_train"] > 150 and json.loads((paths.metrics / "prepare.json").read_text()) == counts
    stages.train(config, paths, progress=False)
    model, _, state = checkpoint.load_model(paths.model / "model.pt")
    spec = state["input_spec"]
    assert spec["properties"][-1] == "pIC50" and model.condition_dim == 5
    j = spec["properties"].index("pIC50")
    cond = ops.sample_conditions(model, spec, {"pIC50": 7.0}, 6, generator=torch.Generator().manual_seed(0),
                                 train_properties=mol.MoleculeData().load(paths.processed, "train").props)
    assert cond[:, j].tolist() == pytest.approx([(7.0 - spec["property_mean"][j]) / spec["property_std"][j]] * 6)
    sample = stages.sample(config, paths)
    assert sample["valid"] == 1.0 and sample["n_samples"] == 40
    ev = stages.evaluate(config, paths, progress=False)
    assert {"FCD_Test", "SNN_Test", "Frag_Test", "Scaf_Test", "Novelty"} <= set(ev) and "FCD_TestSF" not in ev
    start = rows[1].split(",")[0]
    capsys.readouterr()
    assert cli.main(["optimize", "--root", str(tmp_path), "--start", start, "--property", "pIC50", "--steps", "4", "--every", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["step"] for r in out] == [0, 2, 4] and all(r["valid"] for r in out)
    assert all(np.isfinite(r["predicted"]) for r in out)
    # Without the prior penalty the ascent on the head's pIC50 prediction can only go up.
    path = ops.optimize(model, spec, start, prop="pIC50", steps=4, every=2, prior_weight=0.0)
    assert path[-1]["predicted"] > path[0]["predicted"]

"""Write the example molecule files from data that ships in the rdkit wheel (RDKit Contrib FreeWilson).

    python examples/molecule/make_examples.py      # writes chembl2321810.csv and chembl2321810.sdf here

``chembl2321810.csv``: ChEMBL assay CHEMBL2321810 (RDKit's ``CHEMBL2321810.smi``: SMILES and ChEMBL
molregno, joined on it with ``CHEMBL2321810_act.csv``: the measured activity, a pIC50-like value), as
``smiles,molregno,pIC50`` (molregno: the ChEMBL molecule registration number the .smi file carries) in the order of the .smi file. ``chembl2321810.sdf``: its first 20 rows as
an SDF written with RDKit (2D coordinates; ``molregno`` and ``pIC50`` as SDF properties).
"""

from __future__ import annotations

import csv
from pathlib import Path

from rdkit import Chem, RDConfig
from rdkit.Chem import AllChem

SOURCE = Path(RDConfig.RDContribDir) / "FreeWilson" / "data"
HERE = Path(__file__).resolve().parent
SDF_ROWS = 20


def main() -> None:
    with open(SOURCE / "CHEMBL2321810_act.csv") as f:
        activity = {row["Name"]: row["Act"] for row in csv.DictReader(f)}
    rows = []
    for line in (SOURCE / "CHEMBL2321810.smi").read_text().splitlines():
        smiles, molregno = line.split()
        rows.append((smiles, molregno, activity[molregno]))
    with open(HERE / "chembl2321810.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["smiles", "molregno", "pIC50"])
        w.writerows(rows)
    writer = Chem.SDWriter(str(HERE / "chembl2321810.sdf"))
    for smiles, molregno, act in rows[:SDF_ROWS]:
        mol = Chem.MolFromSmiles(smiles)
        AllChem.Compute2DCoords(mol)
        mol.SetProp("_Name", molregno)
        mol.SetProp("molregno", molregno)
        mol.SetProp("pIC50", act)
        writer.write(mol)
    writer.close()
    print(f"{len(rows)} rows → chembl2321810.csv, {SDF_ROWS} → chembl2321810.sdf")


if __name__ == "__main__":
    main()

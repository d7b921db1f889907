"""The molecule modality's own config sections: what its data side, task side and ``stages`` read."""

from __future__ import annotations

import dataclasses

from vaeflow.config import DataConfig, EvaluateConfig, SampleConfig, require

# The elements a molecule of your own file may hold (data.elements' default): the organic subset
# that drug-like sets use; salts' counter-ions go with standardisation, metals are rejected.
ORGANIC_ELEMENTS = ("B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Se", "Br", "I")
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class StandardizeConfig:
    """``data.standardize``: RDKit ``rdMolStandardize`` steps applied to your own molecules, in order
    (the MOSES and QM9 sets are used as published)."""

    # Keep the largest fragment of a salt or mixture (LargestFragmentChooser); off: such records are rejected.
    largest_fragment: bool = True
    # Neutralise charges where a neutral form exists (Uncharger); quaternary N etc. keep their charge.
    neutralize: bool = True
    # Canonical tautomer (TautomerEnumerator.Canonicalize); off by default: slow, and it can move stereo.
    tautomer: bool = False


@dataclasses.dataclass(frozen=True)
class MoleculeDataConfig(DataConfig):
    """``data``: a SMILES data set (MOSES, QM9), or your own file (``source: files``), and its splits."""

    dataset: str = "moses"
    # Held out from the training molecules, chosen with the job seed, for keep-best and warm-up.
    val_size: int = 5000
    # Seeded subsets; None keeps the whole split. limit_test also caps the scaffold test split.
    limit_train: int | None = None
    limit_test: int | None = None
    # --- your own file (source: files; docs/molecule.md "Your own molecules") ---------------------
    # The SMILES column of a CSV/TSV/Parquet file (a .smi file's first field; an SDF's molecule itself).
    smiles_column: str = "smiles"
    # A column naming each record in rejects.csv (an SDF: a property; default its title line).
    id_column: str | None = None
    # A column of train / val / test; None: a seeded split with val_fraction and test_fraction.
    split_column: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    # Measured numeric properties (e.g. [pIC50]): conditions and property-head targets next to
    # logP, QED, SA and weight. A record with a missing or non-numeric value is rejected.
    property_columns: list[str] = dataclasses.field(default_factory=list)
    # CSV field separator; None: a tab for .tsv, a comma otherwise.
    delimiter: str | None = None
    standardize: StandardizeConfig = StandardizeConfig()
    # Elements a molecule may hold; the model's element vocabulary is those seen in the training split.
    elements: list[str] = dataclasses.field(default_factory=lambda: list(ORGANIC_ELEMENTS))
    # Heavy-atom cap for your molecules; the model's limit is the training split's largest molecule.
    max_atoms: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.val_size >= 0, f"data.val_size must be ≥ 0, got {self.val_size}")
        for key in ("limit_train", "limit_test"):
            value = getattr(self, key)
            require(value is None or value >= 0, f"data.{key} must be ≥ 0 or null (the whole split), got {value}")
        for key in ("val_fraction", "test_fraction"):
            require(0 < getattr(self, key) < 1, f"data.{key} must be in (0, 1), got {getattr(self, key)}")
        require(self.val_fraction + self.test_fraction < 1,
                f"data.val_fraction + data.test_fraction must be < 1 (the rest is train), got "
                f"{self.val_fraction} + {self.test_fraction}")
        require(self.max_atoms >= 1, f"data.max_atoms must be ≥ 1, got {self.max_atoms}")
        require(len(set(self.property_columns)) == len(self.property_columns),
                f"data.property_columns names a column twice: {self.property_columns}")
        require(self.delimiter is None or len(self.delimiter) == 1,
                f"data.delimiter must be one character (or null), got {self.delimiter!r}")
        require(bool(self.elements), "data.elements must name at least one element, e.g. [C, N, O]")


@dataclasses.dataclass(frozen=True)
class MoleculeSampleConfig(SampleConfig):
    """``sample``: the common keys plus the targets of a property-conditional model."""

    # Property targets for a property-conditional model (e.g. {logP: 3.0, QED: 0.8}, in real units);
    # properties left out are drawn with the rest of a random training molecule's row.
    properties: dict[str, float] = dataclasses.field(default_factory=dict)


# Molecules evaluate with the common section (evaluate.iwae_examples also sizes the reconstruction metrics).
MoleculeEvaluateConfig = EvaluateConfig

"""The molecule modality's own config sections: what its data side, task side and ``stages`` read."""

from __future__ import annotations

import dataclasses

from vaeflow.config import DataConfig, EvaluateConfig, SampleConfig, require


@dataclasses.dataclass(frozen=True)
class MoleculeDataConfig(DataConfig):
    """``data``: a SMILES data set (MOSES, QM9) and its splits."""

    dataset: str = "moses"
    # Held out from the training molecules, chosen with the job seed, for keep-best and warm-up.
    val_size: int = 5000
    # Seeded subsets; None keeps the whole split. limit_test also caps the scaffold test split.
    limit_train: int | None = None
    limit_test: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.val_size >= 0, f"data.val_size must be ≥ 0, got {self.val_size}")
        for key in ("limit_train", "limit_test"):
            value = getattr(self, key)
            require(value is None or value >= 0, f"data.{key} must be ≥ 0 or null (the whole split), got {value}")


@dataclasses.dataclass(frozen=True)
class MoleculeSampleConfig(SampleConfig):
    """``sample``: the common keys plus the targets of a property-conditional model."""

    # Property targets for a property-conditional model (e.g. {logP: 3.0, QED: 0.8}, in real units);
    # properties left out are drawn with the rest of a random training molecule's row.
    properties: dict[str, float] = dataclasses.field(default_factory=dict)


# Molecules evaluate with the common section (evaluate.iwae_examples also sizes the reconstruction metrics).
MoleculeEvaluateConfig = EvaluateConfig

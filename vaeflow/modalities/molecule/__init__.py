"""Molecules: MOSES/QM9 SMILES → graphs (GNN encoder) and SELFIES (autoregressive decoder), MOSES metrics."""

from vaeflow.modalities.base import Modality
from vaeflow.modalities.molecule.config import MoleculeDataConfig, MoleculeEvaluateConfig, MoleculeSampleConfig
from vaeflow.modalities.molecule.data import MoleculeData, MoleculeSource
from vaeflow.modalities.molecule.task import MoleculeTask
from vaeflow.registry import MODALITIES

_data = MoleculeData()
MODALITIES.register("molecule")(Modality(
    "molecule", _data, MoleculeTask(_data),
    data_config=MoleculeDataConfig, sample_config=MoleculeSampleConfig, evaluate_config=MoleculeEvaluateConfig,
    dataset_type=MoleculeSource,
))

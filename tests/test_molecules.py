"""Molecule modality on real RDKit / PyG / SELFIES: featurisation, rejects, the graph encoder's
invariance, the decoder's validity guarantee, latent operations, and the pipeline through Ray + MLflow."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from rdkit import Chem

from vaeflow import config as cfg
from vaeflow import stages, tracking
from vaeflow.config import ModelConfig, ModuleSpec
from vaeflow.modalities.molecule.config import MoleculeDataConfig
from vaeflow.modalities.molecule import data as mol
from vaeflow.models.vae import build_model
from vaeflow.modalities.molecule import task as ops
from tests.conftest import MOL_TINY, tiny_config

MOSES_ELEMENTS = ("C", "N", "O", "S", "F", "Cl", "Br")


def mol_config(tmp, *overrides: str) -> cfg.ExperimentConfig:
    return tiny_config(tmp, *overrides, preset=MOL_TINY)


# --- featurisation --------------------------------------------------------------------------------


@pytest.mark.parametrize("smiles, atoms, bonds, aromatic_atoms, charges, rings", [
    ("c1ccccc1O", 7, 7, 6, [0] * 7, 1),                                  # phenol
    ("CC(=O)Oc1ccccc1C(=O)O", 13, 13, 6, [0] * 13, 1),                   # aspirin
    ("C[N+](=O)[O-]", 4, 3, 0, [0, 1, 0, -1], 0),                        # nitromethane, charge-separated
    ("c1ccc2[nH]ccc2c1", 9, 10, 9, [0] * 9, 2),                          # indole: two fused aromatic rings
])
def test_featurisation_round_trip(smiles, atoms, bonds, aromatic_atoms, charges, rings):
    f = mol.featurise(smiles, MOSES_ELEMENTS, 32)
    assert f.atoms.shape == (atoms, len(mol.ATOM_FEATURES))
    assert f.edge_index.shape == (2, 2 * bonds) and f.bonds.shape == (2 * bonds, len(mol.BOND_FEATURES))
    assert int(f.atoms[:, 2].sum()) == aromatic_atoms
    assert [mol.FORMAL_CHARGES[i] for i in f.atoms[:, 1]] == charges
    n_aromatic_bonds = int((f.bonds[:, 0] == mol.BOND_TYPES.index("AROMATIC")).sum()) // 2
    ref = Chem.MolFromSmiles(smiles)
    assert n_aromatic_bonds == sum(b.GetIsAromatic() for b in ref.GetBonds())
    assert ref.GetRingInfo().NumRings() == rings
    assert int(f.atoms[:, 5].sum()) == sum(a.IsInRing() for a in ref.GetAtoms())
    # Elements decode back to the molecule's atoms, in RDKit's atom order.
    assert [MOSES_ELEMENTS[i] for i in f.atoms[:, 0]] == [a.GetSymbol() for a in ref.GetAtoms()]
    # The kekulised SELFIES decodes to the same molecule.
    import selfies as sf

    assert Chem.CanonSmiles(sf.decoder(f.selfies)) == f.smiles == Chem.CanonSmiles(smiles)


def test_bad_records_go_to_rejects_with_their_reason():
    records = list(enumerate(["CCO", "", "C1CC", "CC[Si](C)C", "C" * 40, "CCO.Cl", "c1ccccc1"], start=2))
    chunk = mol.featurise_chunk(records, MOSES_ELEMENTS, 32)
    assert chunk.smiles == ["CCO", "c1ccccc1"] and chunk.lines == [2, 8]
    reasons = {line: why for line, _, why in chunk.rejects}
    assert reasons == {3: "empty line", 4: "unparsable SMILES", 5: "unsupported element Si",
                       6: "40 heavy atoms > max_atoms 32", 7: "more than one fragment"}
    assert chunk.n_atoms.tolist() == [3, 6] and chunk.atoms.shape == (9, len(mol.ATOM_FEATURES))


def test_prepare_writes_rejects_and_counts(tmp_path, monkeypatch):
    bad = tmp_path / "qm9" / "bad.csv"
    bad.parent.mkdir()
    # 36 distinct molecules (prepare drops repeats, so a repeated list would shrink the splits).
    good = ["C", "CC", "CO", "CN", "CCO", "CCN", "C=O", "C#N", "OCO", "NCN", "CCC", "CC=O",
            "CCCC", "CCCO", "CCCN", "OCCO", "NCCN", "OCCN", "CC(C)C", "CC(C)O", "CC(C)N", "CCCCC", "CCCCO",
            "CCCCN", "OCCCO", "NCCCN", "CC(O)CO", "CC(N)CN", "CCOC", "CCNC", "COC", "CNC", "CCOCC",
            "CCNCC", "CC(C)(C)C", "CC(C)(C)O"]
    bad.write_text("smiles\n" + "\n".join(good + ["", "not-a-smiles", "CCS", "CCCCCCCCCC", "CC.O"]) + "\n")
    source = mol.MoleculeSource(elements=("C", "N", "O", "F"), max_atoms=9, official={"train": lambda: bad}, test_fraction=0.2)
    monkeypatch.setitem(mol.DATASETS, "crafted", source)
    counts = mol.MoleculeData().prepare(MoleculeDataConfig(dataset="crafted", val_size=4), 0, tmp_path / "out", progress=False)
    with open(tmp_path / "out/rejects.csv") as f:
        rows = list(csv.DictReader(f))
    assert counts["rejected"] == len(rows) == 5
    assert counts["n_train"] + counts["n_val"] + counts["n_test"] + counts["rejected"] == len(good) + 5
    assert {r["reason"] for r in rows} == {"empty line", "unparsable SMILES", "unsupported element S",
                                          "10 heavy atoms > max_atoms 9", "more than one fragment"}
    assert counts["rejected_element"] == counts["rejected_too_large"] == 1


def test_prepare_in_ray_tasks_equals_one_process(tmp_path, monkeypatch, ray_cluster):
    """Chunks featurised as Ray tasks (Ray is initialised) give the same files as one in-process pass."""
    src = tmp_path / "mols.csv"
    src.write_text("SMILES\n" + "\n".join(["CCO", "c1ccccc1", "CC(=O)O", "", "C1CC", "CCN", "OCCO", "CCCl"] * 6) + "\n")
    monkeypatch.setitem(mol.DATASETS, "crafted", mol.MoleculeSource(
        elements=MOSES_ELEMENTS, max_atoms=9, official={"train": lambda: src}, test_fraction=0.25))
    data = MoleculeDataConfig(dataset="crafted", val_size=4)
    a = mol.MoleculeData().prepare(data, 0, tmp_path / "ray", progress=False, chunk_size=5)
    b = mol.MoleculeData().prepare(data, 0, tmp_path / "one", progress=False, chunk_size=1000)
    assert a == b and a["rejected_empty"] == a["rejected_unparsable"] == 6
    for split in ("train", "val", "test"):
        x, y = (torch.load(tmp_path / d / f"{split}.pt", weights_only=True) for d in ("ray", "one"))
        assert x["smiles"] == y["smiles"] and torch.equal(x["edge_index"], y["edge_index"]) and torch.equal(x["tokens"], y["tokens"])
    assert (tmp_path / "ray/rejects.csv").read_text() == (tmp_path / "one/rejects.csv").read_text()


def test_prepared_split_loads_as_pyg_batches(mol_data):
    root, counts = mol_data
    modality = mol.MoleculeData()
    processed = root / "data/processed/molecule"
    ds = modality.load(processed, "train")
    assert len(ds) == counts["n_train"] > 300
    batch = modality.collate_fn()([ds[i] for i in range(5)])
    assert batch.num_graphs == 5 and batch.tokens.shape[0] == 5 and batch.properties.shape == (5, 4)
    # Stored compactly (int8 features, int16 local edge index); served as the long tensors PyG wants.
    assert ds.data["edge_index"].dtype == torch.int16 and ds.data["atoms"].dtype == torch.int8
    assert batch.edge_index.dtype == batch.x.dtype == batch.edge_attr.dtype == torch.long
    ptr = ds.data["node_ptr"]
    assert torch.equal(batch.edge_index, torch.cat([ds[i].edge_index + int(ptr[i]) for i in range(5)], 1))
    spec = modality.input_spec(processed)
    assert spec["vocab"][:3] == ["<pad>", "<bos>", "<eos>"] and all(isinstance(t, str) for t in spec["vocab"])
    # Tokens decode back to the stored molecule.
    assert ops.tokens_to_smiles(ds[0].tokens, spec["vocab"]) == [ds.smiles[0]]


# --- model properties -----------------------------------------------------------------------------


def _tiny_model(spec, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(latent_dim=6, encoder=ModuleSpec("gine", {"hidden": 16, "layers": 3}),
                                   decoder=ModuleSpec("selfies_gru", {"embed": 8, "hidden": 16, "layers": 1})), spec)


def test_graph_encoder_is_invariant_to_atom_order(mol_data):
    from torch_geometric.data import Batch, Data

    root, _ = mol_data
    modality = mol.MoleculeData()
    spec = modality.input_spec(root / "data/processed/molecule")
    model = _tiny_model(spec).eval()
    d = modality.load(root / "data/processed/molecule", "test")[3]
    perm = torch.randperm(d.num_nodes, generator=torch.Generator().manual_seed(0))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(len(perm))
    permuted = Data(x=d.x[perm], edge_index=inverse[d.edge_index], edge_attr=d.edge_attr, num_nodes=d.num_nodes)
    assert not torch.equal(permuted.x, d.x)
    a = model.encode(Batch.from_data_list([d]))
    b = model.encode(Batch.from_data_list([permuted]))
    assert torch.allclose(a.mu, b.mu, atol=1e-5) and torch.allclose(a.logvar, b.logvar, atol=1e-5)


def test_decoder_yields_valid_molecules_from_random_z(mol_data):
    root, _ = mol_data
    spec = mol.MoleculeData().input_spec(root / "data/processed/molecule")
    model = _tiny_model(spec).eval()  # untrained: the worst case for validity
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(300, 6, generator=g)
    for greedy in (False, True):
        smiles = ops.decode_smiles(model, z, greedy=greedy, generator=g)
        assert all(Chem.MolFromSmiles(s) is not None and Chem.MolFromSmiles(s).GetNumAtoms() > 0 for s in smiles)


def test_optimize_runs_on_a_property_conditional_model(mol_data):
    """`vaeflow optimize` on a property-conditional model: the head predicts from z alone (the start
    molecule's condition stays fixed for decoding), so the ascent runs and raises the prediction."""
    root, _ = mol_data
    spec = mol.MoleculeData().input_spec(root / "data/processed/molecule")
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=6, conditional=True, encoder=ModuleSpec("gine", {"hidden": 16, "layers": 2}),
                                    decoder=ModuleSpec("selfies_gru", {"embed": 8, "hidden": 16, "layers": 1})), spec).eval()
    assert model.condition_dim == len(spec["properties"])
    rows = ops.optimize(model, spec, "CCOc1ccccc1", prop="QED", steps=6, every=3)
    assert [r["step"] for r in rows] == [0, 3, 6] and all(r["valid"] for r in rows)
    assert rows[-1]["predicted"] > rows[0]["predicted"]


def _train_in_process(config: cfg.ExperimentConfig, root, epochs: int):
    """A few epochs of the plain-torch loop (no Ray) on the prepared tiny set; returns the model."""
    from torch.utils.data import DataLoader

    from vaeflow.training.loop import run_epoch

    processed = root / "data/processed/molecule"
    modality = mol.MoleculeData()
    spec = modality.input_spec(processed)
    torch.manual_seed(config.seed)
    model = build_model(config.model, spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    loader = DataLoader(modality.load(processed, "train"), batch_size=32, shuffle=True,
                        collate_fn=modality.collate_fn(), generator=torch.Generator().manual_seed(0))
    for epoch in range(epochs):
        run_epoch(model, loader, modality, config, epoch=epoch, device=torch.device("cpu"), optimizer=optimizer,
                  generator=torch.Generator().manual_seed(epoch))
    return model.eval(), spec


def test_decoder_reads_z_a_small_set_is_reconstructed_from_its_codes(mol_data, tmp_path):
    """The path molecule → z → SMILES carries the molecule: overfit on 32 molecules with a small β,
    greedy decoding from each posterior mean gives that molecule back. A decoder that ignored z
    would decode every code to the same string (at most 1/32 right)."""
    from torch.utils.data import DataLoader, Subset

    from vaeflow.training.loop import run_epoch

    root, _ = mol_data
    processed = root / "data/processed/molecule"
    modality = mol.MoleculeData()
    config = mol_config(tmp_path, "loss.beta=0.01", "loss.warmup_epochs=0", "train.lr=0.003", "model.latent_dim=16",
                        "model.decoder.hidden=128", "model.decoder.embed=32", "model.decoder.predict_properties=false")
    train = modality.load(processed, "train")
    torch.manual_seed(0)
    model = build_model(config.model, modality.input_spec(processed))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    loader = DataLoader(Subset(train, range(32)), batch_size=32, collate_fn=modality.collate_fn())
    assert ops.reconstruction_metrics(model, train, n=32)["recon_accuracy"] == 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs faster on one thread than on two contended ones
    try:
        for step in range(250):  # one full batch per "epoch"
            run_epoch(model, loader, modality, config, epoch=step, device=torch.device("cpu"), optimizer=optimizer,
                      generator=torch.Generator().manual_seed(step))
    finally:
        torch.set_num_threads(threads)
    recon = ops.reconstruction_metrics(model, train, n=32)
    assert recon["recon_accuracy"] >= 0.9
    # Each decoding is (nearly always) its own molecule, so similarity 1; another molecule's is not.
    assert recon["recon_tanimoto"] >= 0.9 > recon["recon_tanimoto_shuffled"]


def test_property_conditional_model_steers_generation(mol_data, tmp_path):
    """model.conditional on molecules conditions encoder and decoder on the standardised properties;
    asking for heavy molecules gives heavier ones than asking for light ones.

    Without the property head: the condition alone steers. (A head that read the condition scored
    p(y | z, y) and so trained the condition's embedding for free; the head now reads z alone, and at
    this budget, 12 epochs on 384 molecules, its p(y | z) term leaves the steering gap within noise.)"""
    root, _ = mol_data
    config = mol_config(tmp_path, "model.conditional=true", "train.lr=0.003", "loss.warmup_epochs=0",
                        "model.decoder.predict_properties=false")
    model, spec = _train_in_process(config, root, epochs=12)
    assert model.condition_dim == len(spec["properties"]) and model.num_classes == 0
    train = mol.MoleculeData().load(root / "data/processed/molecule", "train").props
    j = spec["properties"].index("weight")
    mean, std = spec["property_mean"][j], spec["property_std"][j]
    weights = {}
    for name, target in (("light", mean - 1.5 * std), ("heavy", mean + 1.5 * std)):
        g = torch.Generator().manual_seed(1)
        cond = ops.sample_conditions(model, spec, {"weight": target}, 200, generator=g, train_properties=train)
        assert torch.allclose(cond[:, j], torch.full((200,), -1.5 if name == "light" else 1.5), atol=1e-5)
        others = [k for k in range(len(spec["properties"])) if k != j]
        assert cond[:, others].std(0).min() > 0.3  # the other properties come from random training rows
        smiles = ops.decode_smiles(model, torch.randn(200, config.model.latent_dim, generator=g), greedy=False,
                                   generator=g, condition=cond)
        rows = [r for r in ops.property_rows(smiles, None) if r["valid"]]
        assert len(rows) == 200
        weights[name] = float(np.mean([r["weight"] for r in rows]))
    assert weights["heavy"] > weights["light"] + 0.5 * std, weights

    # Interpolation runs between the two molecules' properties as well as their codes.
    path = ops.interpolate(model, spec, "CCO", "CC(=O)Nc1ccc(O)cc1", steps=4)
    assert len(path) == 4 and all(r["valid"] for r in path)

    with pytest.raises(cfg.ConfigError, match="unknown property 'logp'"):
        ops.sample_conditions(model, spec, {"logp": 1.0}, 4, generator=None)
    plain = _tiny_model(spec)
    assert ops.sample_conditions(plain, spec, {}, 4, generator=None) is None
    with pytest.raises(cfg.ConfigError, match="not property-conditional"):
        ops.sample_conditions(plain, spec, {"logP": 1.0}, 4, generator=None)


def test_pyfunc_of_a_conditional_model_returns_smiles(mol_data, tmp_path):
    """The registered pyfunc class on a real checkpoint: sample and reconstruct give SMILES; a
    property target reaches the condition."""
    import types

    import pandas as pd

    from vaeflow.serving import VAEPyfunc
    from vaeflow.training import checkpoint

    root, _ = mol_data
    config = mol_config(tmp_path, "model.conditional=true")
    model, spec = _train_in_process(config, root, epochs=1)
    checkpoint.save(tmp_path / "model.pt", model=model.state_dict(), config=config.to_dict(), input_spec=spec)
    pyfunc = VAEPyfunc()
    pyfunc.load_context(types.SimpleNamespace(artifacts={"checkpoint": str(tmp_path / "model.pt")}))
    out = pyfunc.predict(None, pd.DataFrame({"SMILES": []}), {"mode": "sample", "n": 8, "seed": 3,
                                                              "properties": '{"QED": 0.9}'})
    assert list(out.columns) == ["SMILES"] and len(out) == 8
    assert all(Chem.MolFromSmiles(s) is not None for s in out["SMILES"])
    j = spec["properties"].index("QED")
    cond = pyfunc._condition(2, {"properties": '{"QED": 0.9}', "label": 0})
    assert cond[:, j].tolist() == pytest.approx([(0.9 - spec["property_mean"][j]) / spec["property_std"][j]] * 2)
    assert cond[:, [k for k in range(len(spec["properties"])) if k != j]].abs().max() == 0  # the rest at the mean
    recon = pyfunc.predict(None, pd.DataFrame({"SMILES": ["CCO", "c1ccccc1O"]}), {"mode": "reconstruct"})
    assert len(recon) == 2 and all(Chem.MolFromSmiles(s) is not None for s in recon["SMILES"])


def _checkpoint(tmp_path, spec, *overrides):
    from vaeflow.training import checkpoint

    config = mol_config(tmp_path, *overrides)
    torch.manual_seed(0)
    model = build_model(config.model, spec)
    checkpoint.save(tmp_path / "model.pt", model=model.state_dict(), config=config.to_dict(), input_spec=spec)
    return tmp_path / "model.pt", config


def test_pyfunc_answers_each_row_and_flags_the_unreadable_ones(mol_data, tmp_path):
    """A serving user gets one answer per row: a SMILES that cannot be featurised gets NaN values,
    valid=False and the reason, and does not fail the rest of the batch; an empty request gives an
    empty answer; a request with no SMILES column (no row can be answered) is one clear error."""
    import types

    import pandas as pd

    from vaeflow.serving import VAEPyfunc

    root, _ = mol_data
    spec = mol.MoleculeData().input_spec(root / "data/processed/molecule")
    path, config = _checkpoint(tmp_path, spec)
    pyfunc = VAEPyfunc()
    pyfunc.load_context(types.SimpleNamespace(artifacts={"checkpoint": str(path)}))
    request = pd.DataFrame({"SMILES": ["CCO", "C1CC", "c1ccccc1O", "[Si]C"]})
    z = [f"z{i}" for i in range(config.model.latent_dim)]
    out = pyfunc.predict(None, request)
    assert list(out.columns) == [*z, "valid", "reason"] and len(out) == 4
    assert out["valid"].tolist() == [True, False, True, False]
    assert out["reason"].tolist() == ["", "unparsable SMILES", "", "unsupported element Si"]
    assert np.isfinite(out.loc[[0, 2], z].to_numpy()).all() and out.loc[[1, 3], z].isna().all().all()
    # The readable rows get exactly what they get on their own.
    alone = pyfunc.predict(None, request.iloc[[0, 2]])
    assert np.allclose(alone[z].to_numpy(), out.loc[[0, 2], z].to_numpy(), atol=1e-6)

    recon = pyfunc.predict(None, request, {"mode": "reconstruct"})
    assert list(recon.columns) == ["SMILES", "valid", "reason"] and recon["valid"].tolist() == [True, False, True, False]
    assert all(Chem.MolFromSmiles(s) is not None for s in recon["SMILES"][recon["valid"]])
    assert recon["SMILES"][~recon["valid"]].isna().all()

    for mode, columns in (("encode", [*z, "valid", "reason"]), ("reconstruct", ["SMILES", "valid", "reason"])):
        empty = pyfunc.predict(None, pd.DataFrame({"SMILES": []}), {"mode": mode})  # was an IndexError from PyG
        assert len(empty) == 0 and list(empty.columns) == columns
    with pytest.raises(ValueError, match=r"expected a SMILES column, got columns \['smiles'\]"):
        pyfunc.predict(None, pd.DataFrame({"smiles": ["CCO"]}))


@pytest.mark.parametrize("argv, message", [
    (["interpolate", "--end", "CCC", "--steps", "-2"], "--steps must be ≥ 2"),  # was a RuntimeError
    (["interpolate", "--end", "CCC", "--steps", "0"], "--steps must be ≥ 2"),  # returned [] silently
    (["optimize", "--every", "0"], "--steps and --every must be ≥ 1"),  # was a ZeroDivisionError
    (["optimize", "--steps", "0"], "--steps and --every must be ≥ 1"),
])
def test_latent_commands_reject_bad_counts_in_one_line(argv, message, tmp_path, capsys):
    from vaeflow import cli

    assert cli.main([argv[0], "--root", str(tmp_path), "--start", "CCO", *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vaeflow {argv[0]}: error: {message}") and err.count("\n") == 1


def test_latent_commands_on_a_non_molecule_model_say_so_in_one_line(tmp_path, capsys):
    from tests.conftest import TINY
    from vaeflow import cli
    from vaeflow.training import checkpoint

    config = tiny_config(tmp_path, preset=TINY)
    spec = {"channels": 1, "height": 28, "width": 28, "num_classes": 10}
    model = build_model(config.model, spec)
    checkpoint.save(tmp_path / "model.pt", model=model.state_dict(), config=config.to_dict(), input_spec=spec)
    for command in (["interpolate", "--end", "CCC"], ["optimize"]):
        assert cli.main([command[0], "--model", str(tmp_path / "model.pt"), "--start", "CCO", *command[1:]]) == 2
        err = capsys.readouterr().err  # was KeyError: 'elements'
        assert f"is a image model; vaeflow {command[0]} works on a molecule model" in err and err.count("\n") == 1


# --- the pipeline through Ray and MLflow ------------------------------------------------------------


@pytest.fixture
def mol_project(mol_data, tmp_path):
    root, _ = mol_data
    (tmp_path / "data/processed").mkdir(parents=True)
    (tmp_path / "data/processed/molecule").symlink_to(root / "data/processed/molecule")
    return tmp_path


def test_molecule_pipeline_two_workers_one_run(mol_project, ray_cluster):
    import mlflow

    config = mol_config(mol_project)
    paths = stages.Paths.for_modality("molecule", mol_project)
    metrics = stages.train(config, paths, progress=False)
    assert metrics["epochs"] == 1 and np.isfinite(metrics["best_val_neg_elbo"])
    sample = stages.sample(config, paths)
    assert sample["valid"] == 1.0 and sample["n_samples"] == config.sample.n
    with open(paths.samples / "samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == config.sample.n and set(rows[0]) >= {"SMILES", "canonical", "valid", "novel", "logP", "QED", "SA", "weight"}
    assert (paths.samples / "samples_grid.png").stat().st_size > 1000

    ev = stages.evaluate(config, paths, progress=False)
    for key in ("valid", "unique_1k", "Novelty", "IntDiv", "IntDiv2", "FCD_Test", "FCD_TestSF", "SNN_Test",
                "Frag_Test", "Filters", "logP", "SA", "QED", "weight", "recon_accuracy", "recon_tanimoto", "recon_tanimoto_shuffled", "test_nll_iwae"):
        assert key in ev, key
    assert ev["valid"] == 1.0
    assert json.loads((paths.metrics / "evaluate.json").read_text())["valid"] == 1.0

    run = json.loads((paths.model / "run.json").read_text())
    client = tracking.client(config.tracking)
    exp = client.get_experiment_by_name(config.tracking.experiment)
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [run["mlflow_run_id"]]
    logged = client.get_run(run["mlflow_run_id"]).data.metrics
    assert logged["FCD_Test"] == pytest.approx(ev["FCD_Test"]) and logged["sample_valid"] == 1.0
    arts = {a.path for a in client.list_artifacts(run["mlflow_run_id"], "samples")}
    assert arts >= {"samples/samples.csv", "samples/samples_grid.png"}
    arts = {a.path for a in client.list_artifacts(run["mlflow_run_id"], "evaluation")}
    assert arts >= {"evaluation/moses_metrics.csv", "evaluation/properties.png", "evaluation/interpolation.png"}

    # The registered model encodes SMILES.
    model = mlflow.pyfunc.load_model(f"models:/{config.tracking.registered_model}@{config.tracking.alias}")
    import pandas as pd

    encoded = model.predict(pd.DataFrame({"SMILES": ["CCO", "c1ccccc1"]}))
    assert list(encoded.columns) == [f"z{i}" for i in range(config.model.latent_dim)] + ["valid", "reason"]
    assert len(encoded) == 2 and encoded["valid"].all() and np.isfinite(encoded.iloc[:, :-2].to_numpy()).all()
    drawn = model.predict(pd.DataFrame({"SMILES": ["CCO"]}), params={"mode": "sample", "n": 5, "seed": 1})
    assert len(drawn) == 5 and all(Chem.MolFromSmiles(s) is not None for s in drawn["SMILES"])

    # Latent operations on the trained model (library functions behind `vaeflow interpolate/optimize`).
    from vaeflow.training import checkpoint

    trained, _, state = checkpoint.load_model(paths.model / "model.pt")
    path = ops.interpolate(trained, state["input_spec"], "CCOc1ccccc1", "CC(=O)Nc1ccc(O)cc1", steps=5)
    assert len(path) == 5 and all(r["valid"] for r in path)
    opt = ops.optimize(trained, state["input_spec"], "CCOc1ccccc1", prop="QED", steps=20, every=10)
    assert [r["step"] for r in opt] == [0, 10, 20] and all(r["valid"] for r in opt)
    assert opt[-1]["predicted"] >= opt[0]["predicted"]


def test_qm9_prepares_through_the_verified_download_path(tmp_path):
    """QM9 is fetched and sha256-verified like the images (from $VAEFLOW_DATA_MIRROR in CI)."""
    data = MoleculeDataConfig(dataset="qm9", val_size=16, limit_train=64, limit_test=16)
    counts = mol.MoleculeData().prepare(data, 0, tmp_path / "qm9", progress=False)
    assert counts["n_train"] + counts["n_val"] + counts["n_test"] + counts["rejected"] == 64 + 16 + 16
    spec = json.loads((tmp_path / "qm9/spec.json").read_text())
    assert spec["elements"] == ["C", "N", "O", "F"] and spec["splits"] == ["test", "train", "val"]
    assert counts["n_train"] >= 60 and counts["n_test"] >= 15

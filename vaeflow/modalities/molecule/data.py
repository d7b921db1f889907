"""Molecule modality: SMILES → RDKit Mol → torch-geometric graph + SELFIES tokens + properties.

Data sets: MOSES (Polykovskiy et al. 2020), read from the data folder of the PyPI package
``molsets`` (``pip install --no-deps molsets``), and QM9 SMILES fetched and verified by
``vaeflow.download`` like the images.

Processed layout (``data/processed/molecule/``): ``{train,val,test[,test_scaffolds]}.pt`` each a
dict of collated tensors plus slices (PyG ``InMemoryDataset`` style: one tensor per field for the
whole split, ``node_ptr`` / ``edge_ptr`` offsets per molecule), loadable with
``torch.load(weights_only=True)``; ``spec.json`` (feature sizes, SELFIES vocabulary, property
statistics); ``rejects.csv`` (every dropped record with its split, line and reason).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import io
import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from vaeflow.modalities.molecule import chem
from vaeflow.config import ConfigError
from vaeflow.modalities.molecule.config import MoleculeDataConfig as DataConfig
from vaeflow.modalities.base import ModalityData, ModelInputs, ServingRows
from vaeflow.download import RemoteFile, fetch
from vaeflow.io import atomic_path
from vaeflow.malloc import release_freed_memory
from vaeflow.registry import DATASETS
from vaeflow.models.decoders.selfies_gru import EOS, PAD, SPECIALS
from vaeflow.splits import subset

log = logging.getLogger(__name__)

# --- featurisation --------------------------------------------------------------------------------

# Categorical atom features; every column's last value is "other" so no value is ever dropped silently.
FORMAL_CHARGES = (-1, 0, 1)
NUM_HS = (0, 1, 2, 3)
HYBRIDISATIONS = ("SP", "SP2", "SP3")
BOND_TYPES = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")
ATOM_FEATURES = ("element", "formal_charge", "aromatic", "num_hs", "hybridisation", "in_ring")
BOND_FEATURES = ("bond_type", "conjugated", "in_ring")


def _index(values: Sequence[Any], value: Any) -> int:
    """Position of ``value`` in ``values``, or ``len(values)`` (the "other" bucket)."""
    try:
        return values.index(value)
    except ValueError:
        return len(values)


def atom_feature_sizes(elements: Sequence[str]) -> list[int]:
    return [len(elements), len(FORMAL_CHARGES) + 1, 2, len(NUM_HS) + 1, len(HYBRIDISATIONS) + 1, 2]


def bond_feature_sizes() -> list[int]:
    return [len(BOND_TYPES), 2, 2]


class Rejected(ValueError):
    """A record that cannot be used; the message is the reason written to rejects.csv."""


@dataclasses.dataclass
class Featurised:
    """One molecule, ready to store.

    Shapes:
        atoms: (n_atoms, len(ATOM_FEATURES)) int8; edge_index: (2, 2 * n_bonds) int16 (both
        directions); bonds: (2 * n_bonds, len(BOND_FEATURES)) int8; properties: (len(chem.PROPERTIES),).
    """

    smiles: str  # RDKit canonical SMILES
    selfies: str
    atoms: np.ndarray
    edge_index: np.ndarray
    bonds: np.ndarray
    properties: np.ndarray


def graph_features(mol: Any, elements: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Atom features, directed edges and bond features of a sanitised RDKit molecule.

    Raises:
        Rejected: an element outside ``elements`` or a bond type outside ``BOND_TYPES``.

    Shapes:
        returns atoms (A, len(ATOM_FEATURES)) int8, edge_index (2, 2B) int16 (each bond both ways;
        atom indices are local, and int16 keeps the full MOSES edge index at a quarter of int64),
        bonds (2B, len(BOND_FEATURES)) int8.
    """
    atoms = []
    for atom in mol.GetAtoms():
        symbol = atom.GetSymbol()
        if symbol not in elements:
            raise Rejected(f"unsupported element {symbol}")
        atoms.append((
            elements.index(symbol),
            _index(FORMAL_CHARGES, atom.GetFormalCharge()),
            int(atom.GetIsAromatic()),
            _index(NUM_HS, atom.GetTotalNumHs()),
            _index(HYBRIDISATIONS, str(atom.GetHybridization())),
            int(atom.IsInRing()),
        ))
    src, dst, bonds = [], [], []
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        kind = str(bond.GetBondType())
        if kind not in BOND_TYPES:
            raise Rejected(f"unsupported bond type {kind}")
        feat = (BOND_TYPES.index(kind), int(bond.GetIsConjugated()), int(bond.IsInRing()))
        src += [i, j]
        dst += [j, i]
        bonds += [feat, feat]
    return (
        np.asarray(atoms, dtype=np.int8).reshape(-1, len(ATOM_FEATURES)),
        np.asarray([src, dst], dtype=np.int16).reshape(2, -1),
        np.asarray(bonds, dtype=np.int8).reshape(-1, len(BOND_FEATURES)),
    )


def featurise(smiles: str, elements: Sequence[str], max_atoms: int) -> Featurised:
    """Parse, sanitise and featurise one SMILES.

    Aromaticity is kept in the graph features (RDKit's sanitised, aromatic form); the SELFIES string
    is encoded from an explicitly kekulised copy, since SELFIES has no aromatic bond symbols.

    Raises:
        Rejected: empty line, unparsable or unsanitisable SMILES, more than one fragment, an element
            outside ``elements``, more than ``max_atoms`` heavy atoms, or no kekulé/SELFIES form.
    """
    return featurise_mol(_parse(smiles), elements, max_atoms)


def _parse(smiles: str) -> Any:
    smiles = smiles.strip()
    if not smiles:
        raise Rejected("empty line")
    mol = chem.mol_from_smiles(smiles)
    if mol is None:
        raise Rejected("unparsable SMILES")
    return mol


def featurise_mol(mol: Any, elements: Sequence[str], max_atoms: int) -> Featurised:
    """``featurise`` of a parsed, sanitised RDKit molecule (same checks and reasons)."""
    import selfies as sf
    from rdkit import Chem

    if mol.GetNumAtoms() == 0:
        raise Rejected("no atoms")
    if len(Chem.GetMolFrags(mol)) > 1:
        raise Rejected("more than one fragment")
    if mol.GetNumAtoms() > max_atoms:
        raise Rejected(f"{mol.GetNumAtoms()} heavy atoms > max_atoms {max_atoms}")
    atoms, edge_index, bonds = graph_features(mol, elements)
    canonical = Chem.MolToSmiles(mol)
    kekule = Chem.Mol(mol)
    try:
        Chem.Kekulize(kekule, clearAromaticFlags=True)
        selfies = sf.encoder(Chem.MolToSmiles(kekule, kekuleSmiles=True))
    except (ValueError, RuntimeError, sf.EncoderError) as exc:
        raise Rejected(f"no kekulé/SELFIES form ({type(exc).__name__})") from None
    if not selfies:
        raise Rejected("empty SELFIES")
    return Featurised(
        smiles=canonical,
        selfies=selfies,
        atoms=atoms,
        edge_index=edge_index,
        bonds=bonds,
        properties=np.asarray(chem.properties(mol), dtype=np.float32),
    )


# The standardisation steps, in the order they run, by their data.standardize key.
STANDARDIZE_STEPS = ("largest_fragment", "neutralize", "tautomer")


@functools.cache
def _standardizers() -> dict[str, Any]:
    from rdkit.Chem.MolStandardize import rdMolStandardize

    return {"largest_fragment": rdMolStandardize.LargestFragmentChooser().choose,
            "neutralize": rdMolStandardize.Uncharger().uncharge,
            "tautomer": rdMolStandardize.TautomerEnumerator().Canonicalize}


def standardise(mol: Any, steps: Sequence[str]) -> tuple[Any, list[str]]:
    """RDKit ``rdMolStandardize`` on a sanitised molecule: the largest fragment (LargestFragmentChooser),
    neutralised charges (Uncharger), the canonical tautomer (TautomerEnumerator.Canonicalize), each
    only if named in ``steps``. Returns the molecule and the steps that changed it (canonical SMILES
    before and after).

    Raises:
        Rejected: a step failed (RDKit raised) or left a molecule RDKit cannot sanitise.
    """
    from rdkit import Chem

    tools = _standardizers()
    changed = []
    before = Chem.MolToSmiles(mol)
    for step in STANDARDIZE_STEPS:
        if step not in steps:
            continue
        try:
            out = tools[step](mol)
            Chem.SanitizeMol(out)
        except (ValueError, RuntimeError) as exc:
            raise Rejected(f"standardisation step {step} failed ({type(exc).__name__})") from None
        after = Chem.MolToSmiles(out)
        if after != before:
            changed.append(step)
        mol, before = out, after
    return mol, changed


@dataclasses.dataclass
class Chunk:
    """Featurised molecules of one chunk, concatenated (what a worker sends back)."""

    lines: list[int]
    smiles: list[str]
    selfies: list[str]
    atoms: np.ndarray  # (n_atoms_total, F_atom) int8
    edge_index: np.ndarray  # (2, n_edges_total) int16, local to each molecule
    bonds: np.ndarray  # (n_edges_total, F_bond) int8
    n_atoms: np.ndarray  # (n,) int64
    n_edges: np.ndarray  # (n,) int64
    properties: np.ndarray  # (n, P) float32
    rejects: list[tuple[int, str, str]]  # (line, smiles, reason)
    # Your own files only: each molecule's ID and the split its file assigns (or None), and how
    # many molecules each standardisation step changed; rejects then carry the ID as well.
    ids: list[str] = dataclasses.field(default_factory=list)
    splits: list[str | None] = dataclasses.field(default_factory=list)
    changed: Counter = dataclasses.field(default_factory=Counter)
    reject_ids: list[str] = dataclasses.field(default_factory=list)


def featurise_chunk(records: list[tuple[int, str]], elements: Sequence[str], max_atoms: int) -> Chunk:
    """Featurise ``(line, smiles)`` records; bad ones become rejects with their reason."""
    chem.quiet_rdkit()
    good: list[tuple[int, Featurised]] = []
    rejects = []
    for line, smiles in records:
        try:
            good.append((line, featurise(smiles, elements, max_atoms)))
        except Rejected as exc:
            rejects.append((line, smiles.strip(), str(exc)))
    return _chunk(good, rejects, len(chem.PROPERTIES))


def featurise_records(records: list[Any], elements: Sequence[str], max_atoms: int,
                      steps: Sequence[str]) -> Chunk:
    """Featurise your own file's records (``files.Record``): parse, standardise (``steps``), featurise;
    the measured values follow the computed properties. Bad ones become rejects with their reason."""
    chem.quiet_rdkit()
    good: list[tuple[int, Featurised]] = []
    rejects, reject_ids, ids, splits = [], [], [], []
    changed: Counter = Counter()
    n_values = len(records[0].values) if records else 0
    for r in records:
        try:
            mol, steps_changed = standardise(_parse(r.smiles), steps)
            f = featurise_mol(mol, elements, max_atoms)
        except Rejected as exc:
            rejects.append((r.line, r.smiles.strip(), str(exc)))
            reject_ids.append(r.id)
            continue
        changed.update(steps_changed)
        f.properties = np.concatenate([f.properties, np.asarray(r.values, dtype=np.float32)])
        good.append((r.line, f))
        ids.append(r.id)
        splits.append(r.split)
    chunk = _chunk(good, rejects, len(chem.PROPERTIES) + n_values)
    chunk.ids, chunk.splits, chunk.changed, chunk.reject_ids = ids, splits, changed, reject_ids
    return chunk


def _chunk(good: list[tuple[int, Featurised]], rejects: list[tuple[int, str, str]], n_props: int) -> Chunk:
    mols = [m for _, m in good]
    cat = lambda arrays, shape: np.concatenate(arrays) if arrays else np.zeros(shape, dtype=np.int8)  # noqa: E731
    return Chunk(
        lines=[line for line, _ in good],
        smiles=[m.smiles for m in mols],
        selfies=[m.selfies for m in mols],
        atoms=cat([m.atoms for m in mols], (0, len(ATOM_FEATURES))),
        edge_index=np.concatenate([m.edge_index for m in mols], 1) if mols else np.zeros((2, 0), np.int16),
        bonds=cat([m.bonds for m in mols], (0, len(BOND_FEATURES))),
        n_atoms=np.asarray([len(m.atoms) for m in mols], dtype=np.int64),
        n_edges=np.asarray([m.edge_index.shape[1] for m in mols], dtype=np.int64),
        properties=np.asarray([m.properties for m in mols], dtype=np.float32).reshape(-1, n_props),
        rejects=rejects,
    )


# --- sources --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MoleculeSource:
    """A SMILES data set: where its splits come from and what molecules it admits.

    Attributes:
        elements: the atom vocabulary; molecules with other elements are rejected.
        max_atoms: heavy-atom limit; larger molecules are rejected.
        official: split name → a function returning the path of a CSV file with a ``smiles``
            column (any case; ``.gz`` allowed). Splits missing here are cut from ``train`` with the seed.
        test_fraction: share of ``train`` held out as ``test`` when there is no official test split.
        reference_stats: split name → file of MOSES reference statistics (FCD, SNN, Frag, Scaf,
            properties) for the *whole* official split, used by the evaluation when present.
    """

    elements: tuple[str, ...]
    max_atoms: int
    official: dict[str, Callable[[], Path]]
    test_fraction: float = 0.0
    reference_stats: dict[str, Callable[[], Path]] = dataclasses.field(default_factory=dict)
    canonical: bool = False  # the files hold RDKit canonical SMILES already (MOSES does)


def _moses(name: str) -> Callable[[], Path]:
    return lambda: chem.molsets_data_dir() / name


# MOSES's filters admit C, N, S, O, F, Cl, Br, H only; its molecules have at most 27 heavy atoms.
DATASETS.register("moses")(MoleculeSource(
    elements=("C", "N", "O", "S", "F", "Cl", "Br"),
    max_atoms=32,
    official={"train": _moses("train.csv.gz"), "test": _moses("test.csv.gz"),
              "test_scaffolds": _moses("test_scaffolds.csv.gz")},
    reference_stats={"test": _moses("test_stats.npz"), "test_scaffolds": _moses("test_scaffolds_stats.npz")},
    canonical=True,
))

QM9_FILE = RemoteFile(
    folder="qm9",
    name="qm9_selfies_tests.csv",
    # DeepChem's qm9.csv holds the same 133,885 molecules in its `smiles` column, among others. The
    # digest is that of the single-column copy the project's mirror holds (no network was available to
    # take upstream's): a fresh download fails verification until upstream's sha256 is added here.
    url="https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/qm9.csv",
    sha256="80c060e299a44112b89be3fc6d95145dfeda97aa3eab1e2662aafdfbb00f7929",
)
DATASETS.register("qm9")(MoleculeSource(
    elements=("C", "N", "O", "F"),
    max_atoms=9,
    official={"train": lambda: fetch(QM9_FILE)},
    test_fraction=0.1,
))


def _open_text(path: Path) -> io.TextIOBase:
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def _count_records(path: Path) -> int:
    with _open_text(path) as f:
        return sum(1 for _ in f) - 1  # minus the header


def smiles_column(header: str, path: Path) -> int:
    """Index of the ``smiles`` column (any case) in a CSV header line."""
    names = [h.strip().lower() for h in header.rstrip("\n").split(",")]
    if "smiles" not in names:
        raise ValueError(f"{path}: no 'smiles' column in its header {header.strip()!r}")
    return names.index("smiles")


def _stream(path: Path, keep: np.ndarray, chunk_size: int) -> Iterator[list[tuple[int, str]]]:
    """Chunks of (line number, SMILES) for the record indices in ``keep`` (sorted), read lazily."""
    wanted = iter(keep.tolist())
    target = next(wanted, None)
    chunk: list[tuple[int, str]] = []
    with _open_text(path) as f:
        column = smiles_column(next(f, ""), path)
        for i, line in enumerate(f):
            if target is None:
                break
            if i != target:
                continue
            fields = line.rstrip("\n").split(",")
            chunk.append((i + 2, fields[column] if len(fields) > column else ""))  # 1-based, after the header
            target = next(wanted, None)
            if len(chunk) == chunk_size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def plan_splits(source: MoleculeSource, config: DataConfig, seed: int) -> dict[str, tuple[Path, np.ndarray]]:
    """Which records of which file make each split: ``{split: (file, sorted record indices)}``."""
    rng = np.random.default_rng(seed)
    train_file = source.official["train"]()
    n = _count_records(train_file)
    order = rng.permutation(n)
    plan: dict[str, tuple[Path, np.ndarray]] = {}
    n_test = 0 if "test" in source.official else int(round(source.test_fraction * n))
    if not 0 <= config.val_size < n - n_test:
        raise ConfigError(f"data.val_size must be in [0, {n - n_test}) for {train_file.name} ({n} records"
                          f"{f', {n_test} held out for test' if n_test else ''}), got {config.val_size}; "
                          "lower it with --set data.val_size=…")
    test_idx = np.sort(order[:n_test])
    val_idx = np.sort(order[n_test : n_test + config.val_size])
    train_idx = np.sort(order[n_test + config.val_size :])
    plan["train"] = (train_file, train_idx[subset(len(train_idx), config.limit_train, rng)])
    plan["val"] = (train_file, val_idx)
    if n_test:
        plan["test"] = (train_file, test_idx[subset(len(test_idx), config.limit_test, rng)])
    for split, file in source.official.items():
        if split != "train":
            path = file()
            plan[split] = (path, subset(_count_records(path), config.limit_test, rng))
    return plan


# --- parallel map over chunks ---------------------------------------------------------------------


def _map_chunks(chunks: Iterator[Any], elements: Sequence[str], max_atoms: int,
                *, total: int | None, chunk_size: int, desc: str, progress: bool,
                fn: Callable[..., Chunk] = featurise_chunk, **options: Any) -> Iterator[Chunk]:
    """Featurise chunks in parallel, in order, with at most a few chunks in flight (bounded memory).

    ``fn(chunk, elements, max_atoms, **options)`` featurises one chunk. On a Ray cluster
    (``RAY_ADDRESS`` set, or Ray already initialised) the chunks are Ray tasks spread over the
    cluster; otherwise a process pool uses every local core. ``total`` (records) may be None
    (a streamed file): then one chunk alone is featurised in this process.
    """
    bar = tqdm(total=total, desc=desc, unit="mol", disable=not progress, smoothing=0.1)
    use_ray = os.environ.get("RAY_ADDRESS", "local") != "local"  # "local" asks for a new local cluster: use the pool
    try:
        import ray

        use_ray = use_ray or ray.is_initialized()
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
    kwargs = {"elements": tuple(elements), "max_atoms": max_atoms, **options}
    chunks = iter(chunks)
    if total is None:  # peek: a file of one chunk is featurised here
        head = list(itertools.islice(chunks, 2))
        single = len(head) < 2
        chunks = itertools.chain(head, chunks)
    else:
        single = total <= chunk_size
    if single:  # one chunk: a pool would cost more than it saves
        results = (fn(c, **kwargs) for c in chunks)
    elif use_ray:
        results = _map_ray(chunks, fn, kwargs)
    else:
        results = _map_pool(chunks, fn, kwargs)
    for chunk in results:
        bar.update(len(chunk.lines) + len(chunk.rejects))
        yield chunk
    bar.close()


def _apply(fn: Callable[..., Chunk], chunk: Any, kwargs: dict[str, Any]) -> Chunk:
    return fn(chunk, **kwargs)


def _map_pool(chunks: Iterator[Any], fn: Callable[..., Chunk], kwargs: dict[str, Any]) -> Iterator[Chunk]:
    import collections
    import multiprocessing as mp

    workers = chem.cpu_count()
    window = 2 * workers
    # A window of submitted chunks, read from the file only as results come back (Pool.imap's feeder
    # thread would read the whole file ahead), kept in order.
    with mp.get_context("fork").Pool(workers) as pool:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_apply, (fn, chunk, kwargs)))
            if len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _map_ray(chunks: Iterator[Any], fn: Callable[..., Chunk], kwargs: dict[str, Any]) -> Iterator[Chunk]:
    import ray

    if not ray.is_initialized():
        ray.init()
    task = ray.remote(_apply)
    window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    pending: list[Any] = []
    for chunk in chunks:
        pending.append(task.remote(fn, chunk, kwargs))
        if len(pending) >= window:
            yield ray.get(pending.pop(0))
    while pending:
        yield ray.get(pending.pop(0))


# --- storage --------------------------------------------------------------------------------------


def _collate_chunks(chunks: list[Chunk], n_props: int = len(chem.PROPERTIES),
                    lists: Sequence[str] = ("lines",)) -> dict[str, Any]:
    """Concatenate chunks into one InMemoryDataset-style dict (tensors + per-molecule offsets) with
    the per-molecule lists named in ``lists``. The chunks are emptied field by field as each field is
    copied, so the peak holds one field twice, not the whole split."""

    def take(field: str) -> list[Any]:
        parts = [getattr(c, field) for c in chunks]
        for c in chunks:
            setattr(c, field, None)
        return parts

    def cat(field: str, empty: torch.Tensor, axis: int = 0) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(take(field), axis)) if chunks else empty

    n_atoms, n_edges = (np.concatenate(take(f)) if chunks else np.zeros(0, np.int64) for f in ("n_atoms", "n_edges"))
    return {
        "atoms": cat("atoms", torch.zeros(0, len(ATOM_FEATURES), dtype=torch.int8)),
        "edge_index": cat("edge_index", torch.zeros(2, 0, dtype=torch.int16), axis=1),
        "bonds": cat("bonds", torch.zeros(0, len(BOND_FEATURES), dtype=torch.int8)),
        "node_ptr": torch.from_numpy(np.concatenate([[0], np.cumsum(n_atoms)])),
        "edge_ptr": torch.from_numpy(np.concatenate([[0], np.cumsum(n_edges)])),
        "properties": cat("properties", torch.zeros(0, n_props)),
        **{field: [x for part in take(field) for x in part] for field in ("smiles", "selfies", *lists)},
    }


# Every SELFIES vocabulary starts with the special tokens (build_vocab), so <pad> is id 0.
PAD_ID = SPECIALS.index(PAD)


def tokenize(selfies: Sequence[str], vocab: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
    """Token ids (N, L) padded with ``<pad>``, each row ending in ``<eos>``; indices of rows that use
    tokens outside ``vocab`` (rejected: the model could not represent them)."""
    import selfies as sf

    stoi = {t: i for i, t in enumerate(vocab)}
    rows, unknown = [], []
    for i, s in enumerate(selfies):
        ids = [stoi.get(t, -1) for t in sf.split_selfies(s)]
        if -1 in ids:
            unknown.append(i)
            ids = []
        rows.append(ids + [stoi[EOS]])
    length = max((len(r) for r in rows), default=1)
    out = torch.full((len(rows), length), stoi[PAD], dtype=torch.int16)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.int16)
    return out, unknown


def build_vocab(selfies: Sequence[str]) -> list[str]:
    """SELFIES vocabulary of a training split: the special tokens, then every token seen, sorted."""
    import selfies as sf

    tokens: set[str] = set()
    for s in selfies:
        tokens.update(sf.split_selfies(s))
    return [*SPECIALS, *sorted(tokens)]


def _drop(data: dict[str, Any], rows: list[int]) -> dict[str, Any]:
    """``data`` without the molecules at ``rows`` (rebuilding the offsets)."""
    if not rows:
        return data
    keep = np.setdiff1d(np.arange(len(data["smiles"])), rows)
    node_ptr, edge_ptr = data["node_ptr"].numpy(), data["edge_ptr"].numpy()
    atom_rows = np.concatenate([np.arange(node_ptr[i], node_ptr[i + 1]) for i in keep]) if len(keep) else np.zeros(0, np.int64)
    edge_rows = np.concatenate([np.arange(edge_ptr[i], edge_ptr[i + 1]) for i in keep]) if len(keep) else np.zeros(0, np.int64)
    n_atoms, n_edges = np.diff(node_ptr)[keep], np.diff(edge_ptr)[keep]
    return data | {
        "atoms": data["atoms"][atom_rows],
        "edge_index": data["edge_index"][:, edge_rows],
        "bonds": data["bonds"][edge_rows],
        "node_ptr": torch.from_numpy(np.concatenate([[0], np.cumsum(n_atoms)])),
        "edge_ptr": torch.from_numpy(np.concatenate([[0], np.cumsum(n_edges)])),
        "properties": data["properties"][keep],
        "smiles": [data["smiles"][i] for i in keep],
        "selfies": [data["selfies"][i] for i in keep],
        **{k: [data[k][i] for i in keep] for k in ("lines", "ids") if k in data},
    }


def _graph(f: Featurised) -> Any:
    from torch_geometric.data import Data

    return Data(x=torch.from_numpy(f.atoms).long(), edge_index=torch.from_numpy(f.edge_index).long(),
                edge_attr=torch.from_numpy(f.bonds).long(), num_nodes=len(f.atoms))


@functools.cache
def novelty_reference(dataset: str) -> frozenset[str]:
    """Canonical SMILES of a data set's whole official training file (MOSES measures novelty against
    its full training set, not a quick preset's subset)."""
    source: MoleculeSource = DATASETS.get_or_raise(dataset, "data.dataset")
    path = source.official["train"]()
    with _open_text(path) as f:
        column = smiles_column(next(f, ""), path)
        raw = [line.rstrip("\n").split(",")[column] for line in f]
    if source.canonical:
        return frozenset(raw)
    chem.quiet_rdkit()
    return frozenset(filter(None, (chem.canonical(s) for s in raw)))


def novelty_set(config: DataConfig, processed_dir: Path) -> frozenset[str]:
    """Canonical SMILES novelty is measured against: a data set's whole official training file, or
    the training split of your own file (as prepared: standardised, canonical)."""
    if config.source == "files":
        return frozenset(torch.load(Path(processed_dir) / "train.pt", weights_only=True)["smiles"])
    return novelty_reference(config.dataset)


def tokens_to_smiles(tokens: torch.Tensor, vocab: Sequence[str]) -> list[str]:
    """Token ids → SELFIES → SMILES (RDKit canonical). Shapes: tokens (N, L)."""
    import selfies as sf

    out = []
    for row in tokens.tolist():
        toks = []
        for t in row:
            if vocab[t] == EOS:
                break
            if vocab[t] not in SPECIALS:
                toks.append(vocab[t])
        smiles = sf.decoder("".join(toks)) or ""
        out.append(chem.canonical(smiles) or smiles)
    return out


class MoleculeDataset(torch.utils.data.Dataset):
    """A processed split held as collated tensors; items are PyG ``Data`` built by slicing.

    Each item has ``x`` (n_atoms, F_atom) long, ``edge_index`` (2, n_edges) long, ``edge_attr``
    (n_edges, F_bond) long, ``tokens`` (1, L) long and ``properties`` (1, P) float (standardised).
    """

    def __init__(self, data: dict[str, Any], prop_mean: torch.Tensor, prop_std: torch.Tensor):
        self.data = data
        self.smiles: list[str] = data["smiles"]
        self.props = (data["properties"] - prop_mean) / prop_std  # (N, P), standardised with train statistics

    def __len__(self) -> int:
        return len(self.smiles)

    def token_lengths(self) -> torch.Tensor:
        """SELFIES tokens of each molecule, ``<eos>`` included (the row's width without ``<pad>``).

        Shapes:
            → (N,) long
        """
        return (self.data["tokens"] != PAD_ID).sum(1).long()  # (N, L) → (N,): padding only trails

    def __getitem__(self, i: int) -> Any:
        from torch_geometric.data import Data

        d = self.data
        a0, a1 = int(d["node_ptr"][i]), int(d["node_ptr"][i + 1])
        e0, e1 = int(d["edge_ptr"][i]), int(d["edge_ptr"][i + 1])
        return Data(
            x=d["atoms"][a0:a1].long(),
            edge_index=d["edge_index"][:, e0:e1].long(),  # stored as int16 (data prepared before: int64)
            edge_attr=d["bonds"][e0:e1].long(),
            tokens=d["tokens"][i : i + 1].long(),  # (1, L): PyG concatenates these into (B, L)
            properties=self.props[i : i + 1],
            num_nodes=a1 - a0,
        )


@dataclasses.dataclass
class MoleculeTarget:
    """What the molecule decoder's likelihood scores. Shapes: tokens (N, L) long; properties (N, P)."""

    tokens: torch.Tensor
    properties: torch.Tensor | None = None


# --- the modality ---------------------------------------------------------------------------------


def _read_spec(processed_dir: Path) -> dict[str, Any]:
    path = Path(processed_dir) / "spec.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the prepare stage first (dvc repro prepare@molecule)")
    return json.loads(path.read_text())


def collate_graphs(items: list[Any]) -> Any:
    """PyG ``Data`` items → one ``Batch``; token rows (stored as wide as the split's longest
    molecule) are cut to the batch's longest. The decoder is causal and its likelihood masks
    ``<pad>``, so the columns cut changed no loss, only its cost.

    Shapes:
        items[i].tokens: (1, L) → batch.tokens: (N, L_batch), L_batch ≤ L
    """
    from torch_geometric.data import Batch

    batch = Batch.from_data_list(items)
    tokens = getattr(batch, "tokens", None)  # graphs without tokens (e.g. encoder input) pass as they are
    if tokens is not None and tokens.numel():
        batch.tokens = tokens[:, : int((tokens != PAD_ID).sum(1).max())]  # (N, L) → (N, L_batch)
    return batch


class MoleculeData(ModalityData):
    """Graphs in, SELFIES out: a GNN encoder reads the molecular graph, an autoregressive decoder
    writes SELFIES tokens (every token sequence decodes to a valid molecule, Krenn et al. 2020)."""

    def prepare(self, config: DataConfig, seed: int, out_dir: Path, *, progress: bool = True,
                chunk_size: int = 2000) -> dict[str, Any]:
        if config.source == "files":
            return prepare_files(config, seed, Path(out_dir), progress=progress, chunk_size=chunk_size)
        source: MoleculeSource = DATASETS.get_or_raise(config.dataset, "data.dataset")
        if not isinstance(source, MoleculeSource):
            raise ConfigError(f"data.dataset {config.dataset!r} is not a molecule data set; use moses or qm9")
        plan = plan_splits(source, config, seed)
        splits: dict[str, dict[str, Any]] = {}
        rejects: list[tuple[str, int, str, str, str]] = []
        for split, (path, keep) in plan.items():
            chunks = []
            for chunk in _map_chunks(_stream(path, keep, chunk_size), source.elements, source.max_atoms,
                                     total=len(keep), chunk_size=chunk_size, desc=f"featurise {config.dataset} {split}", progress=progress):
                chunks.append(chunk)
                rejects += [(split, line, "", smi, why) for line, smi, why in chunk.rejects]
            splits[split] = _collate_chunks(chunks)
        duplicates = drop_duplicates(splits)
        vocab, splits = _tokenize_splits(splits, rejects)
        spec = _spec(config.dataset, splits, vocab, list(source.elements), source.max_atoms, list(chem.PROPERTIES))
        _write(out_dir, splits, spec, rejects, duplicates)
        return _counts(splits, rejects, duplicates, vocab)

    def load(self, processed_dir: Path, split: str) -> MoleculeDataset:
        spec = _read_spec(processed_dir)
        path = Path(processed_dir) / f"{split}.pt"
        if split not in spec["splits"] or not path.is_file():
            raise FileNotFoundError(f"{path} not found; splits of this data set: {spec['splits']}")
        data = torch.load(path, weights_only=True)
        return MoleculeDataset(data, torch.tensor(spec["property_mean"]), torch.tensor(spec["property_std"]))

    def input_spec(self, processed_dir: Path) -> dict[str, Any]:
        spec = _read_spec(processed_dir)
        # A property-conditional model (model.conditional: true) conditions on the standardised properties.
        return spec | {"condition_dim": len(spec["properties"])}

    def collate_fn(self) -> Any:
        return collate_graphs

    def lengths(self, dataset: torch.utils.data.Dataset) -> torch.Tensor | None:
        """SELFIES token counts (the decoder's steps), or None for a data set that is not a
        processed split (e.g. a ``Subset``): then training shuffles plainly."""
        return dataset.token_lengths() if isinstance(dataset, MoleculeDataset) else None

    def model_inputs(self, batch: Any, config: DataConfig, *, train: bool,
                     generator: torch.Generator | None) -> ModelInputs:
        # The standardised properties are the condition of a property-conditional model (ignored otherwise).
        return ModelInputs(x=batch, target=MoleculeTarget(tokens=batch.tokens, properties=batch.properties),
                           labels=batch.properties)

    def example_input(self, dataset: MoleculeDataset, n: int) -> Any:
        import pandas as pd

        return pd.DataFrame({"SMILES": dataset.smiles[:n]})

    def _graphs(self, example: Any, spec: dict[str, Any]) -> list[Any]:
        """One PyG ``Data`` per SMILES (standardised ``properties`` (1, P) attached), or the
        ``Rejected`` reason where a SMILES cannot be featurised.

        Raises:
            ValueError: a DataFrame without a ``SMILES`` column (no row can be answered).
        """
        if hasattr(example, "columns"):
            if "SMILES" not in example.columns:
                raise ValueError(f"expected a SMILES column, got columns {list(example.columns)}")
            example = example["SMILES"]
        mean, std = torch.tensor(spec["property_mean"]), torch.tensor(spec["property_std"])
        items: list[Any] = []
        for s in [str(v) for v in list(example)]:
            try:
                f = featurise(s, spec["elements"], spec["max_atoms"])
            except Rejected as exc:
                items.append(exc)
                continue
            graph = _graph(f)
            # Measured properties of your own data (after the computed ones) are unknown for a new
            # SMILES: they sit at the training mean (0 once standardised).
            n = len(f.properties)
            standard = (torch.from_numpy(f.properties) - mean[:n]) / std[:n]
            graph.properties = torch.cat([standard, torch.zeros(len(mean) - n)])[None].float()  # (1, P)
            items.append(graph)
        return items

    def encoder_input(self, example: Any, spec: dict[str, Any]) -> Any:
        """SMILES (a list, an array, or a DataFrame with a ``SMILES`` column) → a PyG ``Batch`` whose
        ``properties`` (N, P) are standardised like the training data's.

        Raises:
            ValueError: no SMILES, no ``SMILES`` column, or a SMILES that cannot be featurised.
        """
        from torch_geometric.data import Batch

        smiles = list(example["SMILES"]) if hasattr(example, "columns") and "SMILES" in example.columns else example
        items = self._graphs(example, spec)
        if not items:
            raise ValueError("no SMILES to encode")
        for s, item in zip(smiles, items):
            if isinstance(item, Rejected):
                raise ValueError(f"cannot encode {str(s)!r}: {item}")
        return Batch.from_data_list(items)

    def serving_rows(self, example: Any, spec: dict[str, Any]) -> ServingRows:
        """Per-row serving: the SMILES that featurise go to the encoder; each other row is answered
        with ``valid=False`` and its reason (an empty request gives an empty answer)."""
        from torch_geometric.data import Batch

        items = self._graphs(example, spec)
        valid = np.array([not isinstance(i, Rejected) for i in items], dtype=bool)
        graphs = [i for i in items if not isinstance(i, Rejected)]
        return ServingRows(x=Batch.from_data_list(graphs) if graphs else None, valid=valid,
                           reasons=[str(i) if isinstance(i, Rejected) else "" for i in items])

    def predictions(self, generated: torch.Tensor, spec: dict[str, Any]) -> Any:
        """Token ids → a DataFrame with a ``SMILES`` column (RDKit canonical)."""
        import pandas as pd

        return pd.DataFrame({"SMILES": tokens_to_smiles(generated.cpu(), spec["vocab"])})


# --- your own files -------------------------------------------------------------------------------


def _select(chunk: Chunk, rows: np.ndarray) -> Chunk:
    """The molecules of ``chunk`` at ``rows`` (sorted), with their offsets rebuilt; no rejects."""
    node_ptr = np.concatenate([[0], np.cumsum(chunk.n_atoms)])
    edge_ptr = np.concatenate([[0], np.cumsum(chunk.n_edges)])
    atom_rows = np.concatenate([np.arange(node_ptr[i], node_ptr[i + 1]) for i in rows]) if len(rows) else np.zeros(0, np.int64)
    edge_rows = np.concatenate([np.arange(edge_ptr[i], edge_ptr[i + 1]) for i in rows]) if len(rows) else np.zeros(0, np.int64)
    pick = lambda values: [values[i] for i in rows]  # noqa: E731
    return Chunk(lines=pick(chunk.lines), smiles=pick(chunk.smiles), selfies=pick(chunk.selfies),
                 atoms=chunk.atoms[atom_rows], edge_index=chunk.edge_index[:, edge_rows], bonds=chunk.bonds[edge_rows],
                 n_atoms=chunk.n_atoms[rows], n_edges=chunk.n_edges[rows], properties=chunk.properties[rows],
                 rejects=[], ids=pick(chunk.ids), splits=pick(chunk.splits))


def hash_split(smiles: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """A seeded split from the canonical SMILES alone: the same molecule always lands in the same
    split, whatever the file's order or chunking, so a repeat never crosses splits."""
    import hashlib

    u = int.from_bytes(hashlib.blake2b(f"{seed}:{smiles}".encode(), digest_size=8).digest(), "big") / 2**64
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def _training_vocabulary(splits: dict[str, dict[str, Any]], allowed: Sequence[str],
                         rejects: list[tuple[str, int, str, str, str]]) -> tuple[list[str], int]:
    """The element vocabulary and heavy-atom limit of the training split; val/test molecules with an
    element not in train, or larger than train's largest, are rejected. Atom element indices are
    remapped in place from ``allowed`` to the vocabulary."""
    train = splits["train"]
    seen = np.unique(train["atoms"][:, 0].numpy()) if len(train["atoms"]) else np.zeros(0, np.int64)
    elements = [allowed[i] for i in seen]
    lookup = torch.full((len(allowed),), -1, dtype=torch.int8)
    lookup[torch.as_tensor(seen, dtype=torch.long)] = torch.arange(len(seen), dtype=torch.int8)
    sizes = np.diff(train["node_ptr"].numpy())
    max_atoms = int(sizes.max()) if len(sizes) else 0
    for split, data in splits.items():
        ptr = data["node_ptr"].numpy()
        mapped = lookup[data["atoms"][:, 0].long()]
        unseen = (mapped < 0).numpy()
        rows = []
        for i in range(len(data["smiles"])):
            n = ptr[i + 1] - ptr[i]
            if unseen[ptr[i]:ptr[i + 1]].any():
                symbol = allowed[int(data["atoms"][ptr[i] + int(np.argmax(unseen[ptr[i]:ptr[i + 1]])), 0])]
                why = f"element {symbol} not in the training split"
            elif n > max_atoms:
                why = f"{n} heavy atoms > max_atoms {max_atoms} (the training split's largest)"
            else:
                continue
            rows.append(i)
            rejects.append((split, data["lines"][i], data["ids"][i], data["smiles"][i], why))
        data["atoms"][:, 0] = mapped.clamp(min=0)
        splits[split] = _drop(data, rows)
    return elements, max_atoms


def prepare_files(config: DataConfig, seed: int, out_dir: Path, *, progress: bool = True,
                  chunk_size: int = 2000) -> dict[str, Any]:
    """``prepare`` for ``data.source: files``: read, standardise, featurise, split, deduplicate, build
    the vocabulary from the training split, and store the test split's reference statistics.

    Raises:
        TableError: the file cannot be read at all (missing, empty, wrong format, missing column).
        ConfigError: no usable molecule in the training, validation or test split.
    """
    from vaeflow.modalities.molecule import files

    steps = [k for k in STANDARDIZE_STEPS if getattr(config.standardize, k)]
    allowed = list(dict.fromkeys(config.elements))
    n_props = len(chem.PROPERTIES) + len(config.property_columns)
    rejects: list[tuple[str, int, str, str, str]] = []
    changed: Counter = Counter()
    parts: dict[str, list[Chunk]] = {split: [] for split in ("train", "val", "test")}
    first: dict[str, set[str]] = {split: set() for split in parts}  # within-split repeats, dropped on the fly
    repeats: list[tuple[str, int, str, str, str]] = []

    def records() -> Iterator[list[Any]]:
        for good, bad in files.read_records(config, chunk_size):
            rejects.extend(("", line, ident, text, why) for line, ident, text, why in bad)
            if good:
                yield good

    name = Path(config.path).name
    for chunk in _map_chunks(records(), allowed, config.max_atoms, total=None, chunk_size=chunk_size,
                             desc=f"featurise {name}", progress=progress, fn=featurise_records, steps=tuple(steps)):
        rejects.extend(("", line, ident, smi, why) for (line, smi, why), ident in zip(chunk.rejects, chunk.reject_ids))
        changed.update(chunk.changed)
        assigned = [split or hash_split(smi, seed, config.val_fraction, config.test_fraction)
                    for split, smi in zip(chunk.splits, chunk.smiles)]
        chunk.splits = assigned
        for split in parts:
            rows = []
            for i, (s, smi) in enumerate(zip(assigned, chunk.smiles)):
                if s != split:
                    continue
                if smi in first[split]:
                    repeats.append((split, chunk.lines[i], chunk.ids[i], smi, split))
                    continue
                first[split].add(smi)
                rows.append(i)
            if rows:
                parts[split].append(_select(chunk, np.asarray(rows)))
    del first
    splits = {split: _collate_chunks(parts.pop(split), n_props, lists=("lines", "ids")) for split in list(parts)}
    duplicates = repeats + drop_duplicates(splits)
    empty = [split for split, data in splits.items() if not data["smiles"]]
    if empty:
        raise ConfigError(
            f"{config.path}: no usable molecule in the {empty[0]} split ({sum(len(d['smiles']) for d in splits.values())} "
            f"usable, {len(rejects)} rejected{', e.g. ' + rejects[0][-1] if rejects else ''}); "
            + ("check data.split_column's values" if config.split_column else
               "use more molecules, or raise data.val_fraction / data.test_fraction"))
    elements, max_atoms = _training_vocabulary(splits, allowed, rejects)
    vocab, splits = _tokenize_splits(splits, rejects)
    spec = _spec(f"files:{name}", splits, vocab, elements, max_atoms, [*chem.PROPERTIES, *config.property_columns])
    # MOSES-style reference statistics of the test split (FCD, SNN, Frag, Scaf, properties), computed
    # once here and read by evaluate; the novelty reference is the training split itself.
    counts = (_counts(splits, rejects, duplicates, vocab)
              | {f"standardized_{k}": changed.get(k, 0) for k in steps}
              | {"elements": len(elements), "max_atoms": max_atoms})

    def reference(test_smiles: list[str]) -> dict[str, bytes]:
        from vaeflow.modalities.molecule import metrics

        buffer = io.BytesIO()
        np.savez(buffer, stats=np.asarray(metrics.reference_statistics(test_smiles), dtype=object))
        return {REFERENCE_STATS: buffer.getvalue()}

    _write(out_dir, splits, spec, rejects, duplicates, reference)  # splits are freed before the statistics
    return counts


# The processed folder's reference statistics of your test split (molsets' test_stats.npz format).
REFERENCE_STATS = "test_stats.npz"

# Which split keeps a molecule that several splits hold: the test sets stay whole (MOSES's official
# test set is the benchmark's reference), then validation, then train.
KEEP_ORDER = ("test", "test_scaffolds", "val", "train")


def drop_duplicates(splits: dict[str, dict[str, Any]]) -> list[tuple[str, int, str, str, str]]:
    """Drop repeated molecules (same canonical SMILES) in place, so that no molecule is in two
    splits or twice in one: the first in ``KEEP_ORDER``, then in file order, keeps it. Returns the
    dropped ones as (split, line, id, smiles, split that keeps it)."""
    seen: dict[str, str] = {}
    dropped = []
    for split in sorted(splits, key=lambda k: KEEP_ORDER.index(k) if k in KEEP_ORDER else len(KEEP_ORDER)):
        data = splits[split]
        rows = []
        lines, ids = data.get("lines"), data.get("ids")
        for i, smi in enumerate(data["smiles"]):
            if smi in seen:
                rows.append(i)
                dropped.append((split, lines[i] if lines else -1, ids[i] if ids else "", smi, seen[smi]))
            else:
                seen[smi] = split
        splits[split] = _drop(data, rows)
    return dropped


def _tokenize_splits(splits: dict[str, dict[str, Any]], rejects: list[tuple[str, int, str, str, str]]
                     ) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The SELFIES vocabulary of the training split, and every split tokenised with it (molecules
    with other tokens rejected)."""
    vocab = build_vocab(splits["train"]["selfies"])
    out = {}
    for split, data in splits.items():
        tokens, unknown = tokenize(data["selfies"], vocab)
        for i in unknown:
            line = data["lines"][i] if data.get("lines") else -1
            ident = data["ids"][i] if data.get("ids") else ""
            rejects.append((split, line, ident, data["smiles"][i], "SELFIES token not in the training vocabulary"))
        keep = np.setdiff1d(np.arange(len(tokens)), unknown)
        out[split] = _drop(data, unknown) | {"tokens": tokens[keep]}
    if len(out["train"]["smiles"]) == 0:
        raise ConfigError("no usable training molecule; every record was rejected (see the reasons with "
                          "vaeflow prepare, or check data.path and the column options)")
    return vocab, out


def _spec(dataset: str, splits: dict[str, dict[str, Any]], vocab: list[str], elements: list[str],
          max_atoms: int, properties: list[str]) -> dict[str, Any]:
    props = splits["train"]["properties"].double()
    return {
        "dataset": dataset,
        "elements": elements,
        "max_atoms": max_atoms,
        "atom_features": list(ATOM_FEATURES),
        "atom_feature_sizes": atom_feature_sizes(elements),
        "bond_features": list(BOND_FEATURES),
        "bond_feature_sizes": bond_feature_sizes(),
        "vocab": vocab,
        "max_tokens": int(max(d["tokens"].shape[1] for d in splits.values())),
        "properties": properties,
        "property_mean": props.mean(0).tolist(),
        "property_std": (props.std(0) if len(props) > 1 else torch.ones(props.shape[1], dtype=props.dtype)).clamp(min=1e-6).tolist(),
        "splits": sorted(splits),
    }


REJECT_HEADER = ["split", "line", "id", "smiles", "reason"]


def _write(out_dir: Path, splits: dict[str, dict[str, Any]], spec: dict[str, Any], rejects: list[Any],
           duplicates: list[Any], extra: Callable[[list[str]], dict[str, bytes]] | None = None) -> None:
    """The processed folder, whole or not at all: splits, spec, rejects.csv, duplicates.csv and the
    files ``extra(test SMILES)`` returns (name → bytes). With ``extra``, ``splits`` is emptied once
    saved, so that its memory is free before ``extra`` runs (the FCD model's, for one)."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        test_smiles = list(splits["test"]["smiles"]) if extra is not None else []
        for split, data in splits.items():
            torch.save({k: v for k, v in data.items() if k != "lines"}, tmp / f"{split}.pt")
        if extra is not None:
            splits.clear()
            release_freed_memory()  # else the splits' freed pages stay in the reference statistics' peak
        (tmp / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
        with open(tmp / "rejects.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(REJECT_HEADER)
            w.writerows(rejects)
        with open(tmp / "duplicates.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["split", "line", "id", "smiles", "kept_in"])
            w.writerows(duplicates)
        for name, content in (extra(test_smiles) if extra is not None else {}).items():
            (tmp / name).write_bytes(content)


def _counts(splits: dict[str, dict[str, Any]], rejects: list[Any], duplicates: list[Any], vocab: list[str]) -> dict[str, Any]:
    reasons = Counter(_reason_kind(r[-1]) for r in rejects)
    return ({f"n_{split}": len(data["smiles"]) for split, data in splits.items()}
            | {"rejected": len(rejects), "vocab_size": len(vocab), "duplicates": len(duplicates)}
            | {f"rejected_{k}": v for k, v in sorted(reasons.items())})


def _reason_kind(reason: str) -> str:
    """A short key for a reject reason (counts in the stage's metrics JSON)."""
    for key, kind in (("ragged", "ragged"), ("split value", "split"), ("value", "property"),
                      ("standardisation", "standardize"), ("SDF record", "unparsable"),
                      ("not in the training split", "element_not_in_train"),
                      ("empty", "empty"), ("unparsable", "unparsable"), ("element", "element"),
                      ("max_atoms", "too_large"), ("fragment", "fragments"), ("vocabulary", "vocab"),
                      ("SELFIES", "selfies"), ("bond", "bond")):
        if key in reason:
            return kind
    return "other"

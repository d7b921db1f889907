"""Your own molecules (``data.source: files``): records streamed from a .smi, CSV/TSV(.gz), Parquet
or SDF(.gz) file, in chunks, with every bad record kept out and reported.

A record is ``Record(line, smiles, id, split, values)``: the 1-based line of a text file (counting a
header) or the record number of an SDF / row of a Parquet file, the SMILES, an ID for rejects.csv,
the split the file assigns (or None) and the measured property values. Records that cannot be used
(a ragged row, a missing or non-numeric property value, an unknown split value, an SDF block RDKit
cannot read) come back as rejects instead; a file that cannot be read at all raises
``vaeflow.tables.TableError`` (one line: the file, the problem, what to do).
"""

from __future__ import annotations

import dataclasses
import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vaeflow.config import ConfigError
from vaeflow.modalities.molecule import chem
from vaeflow.modalities.molecule.config import SPLITS, MoleculeDataConfig
from vaeflow.tables import LINE, Table, TableError, table_format


@dataclasses.dataclass(frozen=True)
class Record:
    line: int
    smiles: str
    id: str
    split: str | None
    values: tuple[float, ...]


# (line, id, text, reason): a record kept out before featurisation.
Reject = tuple[int, str, str, str]


def file_format(path: str | Path) -> str:
    """``smi``, ``sdf``, ``csv`` or ``parquet`` from the file name (``.gz`` allowed except for Parquet)."""
    name = Path(path).name.lower()
    stem = name[:-3] if name.endswith(".gz") else name
    if stem.endswith(".smi"):
        return "smi"
    if stem.endswith((".sdf", ".sd")):
        return "sdf"
    try:
        return table_format(path)
    except TableError:
        raise TableError(f"{path}: unknown molecule file format; use .smi, .csv, .tsv, .parquet or .sdf "
                         "(text formats optionally .gz)") from None


def check_columns(config: MoleculeDataConfig) -> None:
    """Column options that cannot apply to the file's format, or collide with computed properties."""
    clash = sorted(set(config.property_columns) & set(chem.PROPERTIES))
    if clash:
        raise ConfigError(f"data.property_columns: {clash[0]!r} is a property vaeflow computes "
                          f"({', '.join(chem.PROPERTIES)}); rename that column in your file")
    if file_format(config.path) == "smi" and (config.property_columns or config.split_column or config.id_column):
        raise ConfigError(f"{config.path}: a .smi file has no columns (SMILES, then an optional name, which "
                          "is the ID); for data.property_columns, split_column or id_column use a CSV file")


def read_records(config: MoleculeDataConfig, chunk_size: int) -> Iterator[tuple[list[Record], list[Reject]]]:
    """``(records, rejects)`` chunks of about ``chunk_size`` records, in file order.

    Raises:
        TableError: the file is missing, empty, of an unknown format, lacks a column, or cannot be parsed.
    """
    path = Path(config.path)
    if not path.is_file():
        raise TableError(f"{path}: no such file; check data.path (relative paths start at the project root), "
                         "e.g. data/raw/molecule/<file>")
    if path.stat().st_size == 0:
        raise TableError(f"{path}: the file is empty; put your molecules in it (docs/molecule.md lists the formats)")
    check_columns(config)
    fmt = file_format(path)
    reader = {"smi": _smi, "sdf": _sdf}.get(fmt, _table)
    records: list[Record] = []
    rejects: list[Reject] = []
    seen = 0
    for rec, rej in reader(path, config):
        seen += 1
        if rec is not None:
            records.append(rec)
        else:
            rejects.append(rej)
        if len(records) + len(rejects) >= chunk_size:
            yield records, rejects
            records, rejects = [], []
    if not seen:
        raise TableError(f"{path}: holds no records; put your molecules in it (docs/molecule.md lists the formats)")
    if records or rejects:
        yield records, rejects


# Property texts read as a missing value (CSV conventions and pandas' NaN).
MISSING = ("", "nan", "na", "n/a", "none", "null")


def _split_value(value: Any) -> str | None:
    text = str(value).strip().lower() if value is not None else ""
    return text if text in SPLITS else None


def _record(line: int, ident: str, smiles: str, split_column: str | None, raw_split: Any, raw_values: list[Any],
            names: list[str]) -> tuple[Record | None, Reject | None]:
    """One record, or the reject for its unknown split value or its first missing / non-numeric property."""
    split = None
    if split_column:
        split = _split_value(raw_split)
        if split is None:
            shown = "" if raw_split is None else str(raw_split).strip()
            return None, (line, ident, smiles, f"unknown split value {shown[:20]!r} (use train, val or test)")
    vals, why = _values(raw_values, names)
    if vals is None:
        return None, (line, ident, smiles, why)
    return Record(line, smiles, ident, split, vals), None


def _values(raw: list[Any], names: list[str]) -> tuple[tuple[float, ...] | None, str]:
    """Property values as floats, or None and the reason (the first missing / non-numeric one)."""
    out = []
    for name, value in zip(names, raw):
        text = "" if value is None else str(value).strip()
        if text.lower() in MISSING:
            return None, f"missing {name} value"
        try:
            x = float(text)
        except ValueError:
            return None, f"non-numeric {name} value {text[:40]!r}"
        if not np.isfinite(x):
            return None, f"non-finite {name} value {text[:40]!r}"
        out.append(x)
    return tuple(out), ""


def _open(path: Path, mode: str) -> Any:
    return gzip.open(path, mode) if path.name.lower().endswith(".gz") else open(path, mode)


def _smi(path: Path, config: MoleculeDataConfig) -> Iterator[tuple[Record | None, Reject | None]]:
    """A .smi file: ``SMILES [name]`` per line, split at the first run of whitespace; no header, except
    that a first line whose first field is ``smiles`` (any case) is taken as one and skipped."""
    try:
        with _open(path, "rt") as f:
            for i, text in enumerate(f, start=1):
                fields = text.strip().split(maxsplit=1)
                if i == 1 and fields and fields[0].lower() == "smiles":
                    continue
                if not fields:
                    yield None, (i, "", "", "empty line")
                    continue
                name = fields[1].strip() if len(fields) > 1 else ""
                yield Record(i, fields[0], name, None, ()), None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: unreadable as a SMILES file ({exc}); re-save it as UTF-8 text, "
                         "one molecule per line") from None


def _table(path: Path, config: MoleculeDataConfig) -> Iterator[tuple[Record | None, Reject | None]]:
    """CSV/TSV(.gz)/Parquet through ``vaeflow.tables.Table`` (quoted fields; ragged rows are rejects)."""
    wanted = [config.smiles_column, *([config.id_column] if config.id_column else []),
              *([config.split_column] if config.split_column else []), *config.property_columns]
    table = Table(path, delimiter=config.delimiter, required=wanted, columns=wanted)
    names = list(config.property_columns)
    for frame, bad in table.batches():
        for b in bad:
            yield None, (b.line or 0, "", b.text[:200], f"ragged row: {b.reason}")
        smiles = frame[config.smiles_column].astype(object).to_numpy()
        ids = frame[config.id_column].astype(str).to_numpy() if config.id_column else None
        splits = frame[config.split_column].to_numpy() if config.split_column else None
        raw = [frame[c].to_numpy() for c in names]
        lines = frame[LINE].to_numpy()
        for i in range(len(frame)):
            line = int(lines[i])
            ident = "" if ids is None else str(ids[i]).strip()
            s = "" if smiles[i] is None else str(smiles[i]).strip()
            yield _record(line, ident, s, config.split_column, None if splits is None else splits[i],
                          [r[i] for r in raw], names)


def _sdf(path: Path, config: MoleculeDataConfig) -> Iterator[tuple[Record | None, Reject | None]]:
    """An SDF (.gz) streamed with RDKit's ForwardSDMolSupplier; SDF properties are the columns and the
    molecule itself is the SMILES (written canonical here, standardised and featurised later)."""
    from rdkit import Chem

    chem.quiet_rdkit()
    names = list(config.property_columns)
    try:
        with _open(path, "rb") as f:
            for i, mol in enumerate(Chem.ForwardSDMolSupplier(f, sanitize=True, removeHs=True), start=1):
                if mol is None:
                    yield None, (i, "", "", "SDF record RDKit cannot read or sanitise")
                    continue
                props = mol.GetPropsAsDict(includePrivate=False, includeComputed=False)
                ident = str(props.get(config.id_column, "")) if config.id_column else (
                    mol.GetProp("_Name") if mol.HasProp("_Name") else "")
                smiles = Chem.MolToSmiles(mol)
                # A property the record lacks reads as missing (None), like an empty table cell.
                yield _record(i, ident, smiles, config.split_column, props.get(config.split_column) if config.split_column
                              else None, [props.get(c) for c in names], names)
    except (OSError, EOFError, RuntimeError) as exc:
        raise TableError(f"{path}: unreadable as SDF ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                         "check the file (a .sdf.gz must be gzip)") from None

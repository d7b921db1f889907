"""The user-table reader: a real CSV/Parquet parser, bad records reported with their lines."""

import gzip

import pandas as pd
import pytest

from vaeflow.tables import Table, TableError, numeric


def _rows(table):
    frames, bad = [], []
    for frame, b in table.batches():
        frames.append(frame)
        bad += b
    return pd.concat(frames, ignore_index=True), bad


def test_quoted_fields_and_ragged_rows(tmp_path):
    path = tmp_path / "mols.csv"
    path.write_text('smiles,pIC50\nCCO,5\n"C(C)(C)",6\nCCC,extra,column\nc1ccccc1,7.5\nN\n"C,C",8\n')
    frame, bad = _rows(Table(path, required=["smiles"], block_bytes=16))  # tiny blocks: several batches
    assert frame["smiles"].tolist() == ["CCO", "C(C)(C)", "c1ccccc1", "C,C"]
    assert frame["line"].tolist() == [2, 3, 5, 7]  # the lines the bad records leave
    assert [(b.line, b.text) for b in bad] == [(4, "CCC,extra,column"), (6, "N")]
    assert "3 field(s), the header has 2" in bad[0].reason


def test_tsv_gzip_and_parquet_read_the_same(tmp_path):
    data = pd.DataFrame({"id": ["a", "b", "c"], "value": [1.5, 2.0, 3.25]})
    with gzip.open(tmp_path / "t.tsv.gz", "wt") as f:
        data.to_csv(f, sep="\t", index=False)
    data.to_parquet(tmp_path / "t.parquet")
    tsv, _ = _rows(Table(tmp_path / "t.tsv.gz"))
    parquet, _ = _rows(Table(tmp_path / "t.parquet", columns=["value"]))
    assert tsv["id"].tolist() == ["a", "b", "c"]
    assert numeric(tsv["value"])[0].tolist() == parquet["value"].tolist() == [1.5, 2.0, 3.25]
    assert parquet["line"].tolist() == [1, 2, 3] and "id" not in parquet


def test_numeric_marks_what_is_not_a_finite_number():
    values, bad = numeric(["1", " 2.5 ", "x", "", "inf", "nan", None])
    assert values[:2].tolist() == [1.0, 2.5]
    assert bad.tolist() == [False, False, True, True, True, True, True]


@pytest.mark.parametrize("content, name, message", [
    (None, "missing.csv", "no such file"),
    (b"", "empty.csv", "Empty CSV file"),
    (b"smiles\nCC\n", "table.xlsx", "unknown table format"),
    (b"smiles\nCC\n", "t.csv", "no column 'SMILES'"),
    (b"a,a\n1,2\n", "dup.csv", "repeated column names"),
    (b"smiles\nCC\n\xff\xfe\n", "latin.csv", "unreadable after line"),
    (b"garbage", "t.parquet", "cannot read it as PARQUET"),
])
def test_unreadable_tables_raise_one_line(tmp_path, content, name, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TableError) as err:
        table = Table(path, required=["SMILES"] if name == "t.csv" else ())
        list(table.batches())
    assert message in str(err.value) and "\n" not in str(err.value) and str(path) in str(err.value)

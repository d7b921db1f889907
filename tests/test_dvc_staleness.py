"""dvc.yaml tracks exactly what each stage reads: change one param or file, see which stages go stale.

The stages are not run: their outputs are stand-in files, recorded in dvc.lock by ``dvc commit``, so
``dvc status`` compares every stage's recorded params and code with the changed ones (a few
seconds in all). A change marks the stages that read it directly; the ones after them would rerun
only once the changed stage's outputs change, which ``dvc status`` does not guess.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess

import pytest
import yaml

from tests.conftest import GIT_ENV, copy_tracked_files
from vaeflow import tracking

MODALITIES = ("image", "timeseries", "molecule")
ALL = ("prepare", "train", "sample", "evaluate")
CLASSIFIER = {"classifier"}  # images only: the in-domain classifier of evaluate@image's FD


def _stale(*stages: str, modality: str = "image") -> set[str]:
    return {f"{stage}@{modality}" for stage in stages}


def _all_modalities(*stages: str) -> set[str]:
    return set().union(*(_stale(*stages, modality=m) for m in MODALITIES))


# (params.yaml key, new value) → the stages that read it.
PARAM_CHANGES = [
    ("image.seed", 1, _stale(*ALL) | CLASSIFIER),
    ("image.data.val_size", 100, _stale("prepare")),
    # Read when batches become model inputs (train, evaluate); prepare tracks its whole data section.
    ("image.data.binarize", False, _stale("prepare", "train", "evaluate")),
    ("image.model.latent_dim", 4, _stale("train")),
    ("image.loss.beta", 0.5, _stale("train", "evaluate")),
    ("image.train.epochs", 2, _stale("train")),
    ("image.train.use_gpu", True, _stale("train", "sample", "evaluate")),
    ("image.train.precision", "bf16", _stale("train", "evaluate")),
    ("image.sample.n", 8, _stale("sample")),
    ("image.evaluate.iwae_k", 5, _stale("evaluate")),
    ("image.evaluate.n_fd_samples", 100, _stale("evaluate")),
    # Evaluate reads the classifier's output, which reruns only once its weights change.
    ("image.evaluate.classifier.epochs", 1, CLASSIFIER),
    ("image.tracking.experiment", "other", _stale("train", "sample", "evaluate")),
    ("timeseries.data.window", 12, _stale("prepare", modality="timeseries")),
    ("timeseries.evaluate.posthoc_steps", 10, _stale("evaluate", modality="timeseries")),
    # Read by `vaeflow anomaly` only: no stage reruns for it.
    ("timeseries.evaluate.anomaly_k", 3, set()),
    ("molecule.data.limit_train", 100, _stale("prepare", modality="molecule")),
    # The novelty reference of the sampled and evaluated molecules.
    ("molecule.data.dataset", "qm9", _stale("prepare", "sample", "evaluate", modality="molecule")),
    # Your own file's training split, not data.dataset's, is the novelty reference.
    ("molecule.data.source", "files", _stale("prepare", "sample", "evaluate", modality="molecule")),
    ("molecule.sample.temperature", 0.5, _stale("sample", modality="molecule")),
]

# A file touched → the stages whose output it decides.
FILE_CHANGES = [
    # Prepare computes the reference statistics of your own file's test split with it.
    ("vaeflow/modalities/molecule/metrics.py", _stale("prepare", "sample", "evaluate", modality="molecule")),
    # Your own files: the table reader (molecules, time series) and each modality's file reader.
    ("vaeflow/tables.py", _stale("prepare", modality="molecule") | _stale("prepare", modality="timeseries")),
    ("vaeflow/modalities/image/files.py", _stale("prepare")),
    ("vaeflow/modalities/timeseries/files.py", _stale("prepare", modality="timeseries")),
    ("vaeflow/modalities/molecule/chem.py", _stale(*ALL, modality="molecule")),
    ("vaeflow/modalities/image/data.py", _stale(*ALL) | CLASSIFIER),
    # The classifier stage, evaluate's FD and the VAE-GAN's val_fd while it trains.
    ("vaeflow/modalities/image/quality.py", _stale("train", "evaluate") | CLASSIFIER),
    ("vaeflow/modalities/image/metrics.py", _stale("evaluate")),
    ("vaeflow/modalities/image/task.py", _stale("sample", "evaluate")),
    ("vaeflow/idx.py", _stale("prepare")),
    ("vaeflow/splits.py", _all_modalities("prepare")),
    # The SELFIES vocabulary's special tokens; the decoder is part of every later molecule stage.
    ("vaeflow/models/decoders/selfies_gru.py", _all_modalities("train", "sample", "evaluate") | _stale("prepare", modality="molecule")),
    ("vaeflow/modalities/timeseries/metrics.py", _stale("evaluate", modality="timeseries")),
    ("vaeflow/modalities/timeseries/anomaly.py", set()),
    ("vaeflow/training/ray.py", _all_modalities("train")),
    ("vaeflow/training/loop.py", _all_modalities("train", "evaluate")),
    ("vaeflow/stages.py", _all_modalities("train", "sample", "evaluate") | CLASSIFIER),
    ("vaeflow/download.py", _all_modalities("prepare")),
    ("pipelines/sample.py", _all_modalities("sample")),
    # The CLI only resolves the config (tracked as params); the cluster client and docs decide no output.
    ("vaeflow/cli.py", set()),
    ("vaeflow/cluster.py", set()),
    ("README.md", set()),
]


def _run(args: list[str], cwd) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=os.environ | GIT_ENV)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The project's tracked files in a fresh git + DVC repo, every stage's outputs stand-ins recorded in dvc.lock."""
    from dvc.repo import Repo

    dest = copy_tracked_files(tmp_path_factory.mktemp("staleness"))
    _run(["git", "init", "-q"], dest)
    with contextlib.chdir(dest), Repo(str(dest)) as repo:  # DVC resolves paths from the working directory
        for stage in repo.index.stages:
            for out in stage.outs:
                path = dest / str(out.def_path)
                if path.suffix:  # a metrics or plots file
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}\n")
                else:
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "stand-in").write_text(stage.addressing)
        repo.commit(force=True)
    assert _status(dest) == set()
    return dest


def _status(root) -> set[str]:
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo:
        return set(repo.status())


def _set_param(params: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = params
    for part in parents:
        node = node[part]
    assert last in node, f"params.yaml has no {key}"
    node[last] = value


@pytest.mark.parametrize(("key", "value", "expected"), PARAM_CHANGES, ids=[c[0] for c in PARAM_CHANGES])
def test_a_param_change_marks_exactly_the_stages_that_read_it(repo, key, value, expected):
    path = repo / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    _set_param(params, key, value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert _status(repo) == expected
    finally:
        path.write_text(original)


@pytest.mark.parametrize(("name", "expected"), FILE_CHANGES, ids=[c[0] for c in FILE_CHANGES])
def test_a_code_change_marks_exactly_the_stages_that_run_it(repo, name, expected):
    path = repo / name
    original = path.read_bytes()
    path.write_bytes(original + b"\n# changed\n")
    try:
        assert _status(repo) == expected
    finally:
        path.write_bytes(original)


def test_a_users_data_file_reruns_prepare_only_when_it_changes(repo):
    """Your own file in data/raw/<modality>/, tracked with `dvc add`: prepare reads that folder."""
    raw = repo / "data" / "raw" / "molecule"
    added = [raw / "mols.csv", raw / "mols.csv.dvc", raw / ".gitignore"]
    try:
        (raw / "mols.csv").write_text("smiles,pIC50\nCCO,5.0\n")
        _run(["dvc", "add", "-q", "data/raw/molecule/mols.csv"], repo)
        assert _status(repo) == _stale("prepare", modality="molecule")
        _run(["dvc", "commit", "-q", "-f", "prepare@molecule"], repo)
        assert _status(repo) == set()  # unchanged: nothing to run
        _run(["dvc", "add", "-q", "data/raw/molecule/mols.csv"], repo)  # re-adding the same content
        assert _status(repo) == set()
        (raw / "mols.csv").write_text("smiles,pIC50\nCCO,5.0\nCCN,6.0\n")
        _run(["dvc", "add", "-q", "data/raw/molecule/mols.csv"], repo)
        assert _status(repo) == _stale("prepare", modality="molecule")
        # What the MLflow run records of it: DVC's md5 (that of the bytes) and their sha256.
        tags = tracking.source_tags(raw / "mols.csv")
        content = (raw / "mols.csv").read_bytes()
        assert tags["dvc.source_md5"] == hashlib.md5(content).hexdigest()
        assert tags["vaeflow.source_sha256"] == hashlib.sha256(content).hexdigest()
    finally:
        for path in added:
            path.unlink(missing_ok=True)
        _run(["dvc", "commit", "-q", "-f", "prepare@molecule"], repo)


def test_under_dvc_a_users_file_outside_data_raw_stops_prepare(tmp_path, monkeypatch, capsys):
    """DVC would never rerun prepare for a file it does not track: one line says where to put it."""
    from vaeflow.cli import main

    monkeypatch.setenv("DVC_STAGE", "prepare@molecule")  # what `dvc repro` sets for a stage's command
    (tmp_path / "mols.csv").write_text("smiles\nCCO\n")
    rc = main(["prepare", "--modality", "molecule", "--preset", "configs/molecule/quick.yaml", "--root", str(tmp_path),
               "--set", "data.source=files", "--set", f"data.path={tmp_path / 'mols.csv'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert f"is outside {tmp_path}/data/raw/molecule/" in err and "dvc add" in err

"""The real dvc.yaml, run by DVC in a temporary git repository on the tiny preset."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import GIT_ENV, ROOT, copy_tracked_files


def _run(args: list[str], cwd, timeout: int = 600) -> str:
    # PYTHONPATH: the stages import the copied project, not an installed vaeflow; RAY_ADDRESS=local:
    # each stage starts its own Ray cluster, never joining another Ray instance running on this machine.
    env = os.environ | GIT_ENV | {"PYTHONPATH": str(cwd), "RAY_ADDRESS": "local"}
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _modalities() -> list[str]:
    """The modalities dvc.yaml's stages run over (its ``modalities`` var)."""
    (variables,) = yaml.safe_load((ROOT / "dvc.yaml").read_text())["vars"]
    return list(variables["modalities"])


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the project's tracked files as a fresh git repository, set to the tiny preset."""
    dest = copy_tracked_files(tmp_path_factory.mktemp("dvc_repo"))
    # Every modality of the pipeline on its tiny preset (the module under test, not an installed copy),
    # written into params.yaml the way the docs tell users to switch presets.
    for modality in _modalities():
        _run([sys.executable, "-m", "vaeflow.cli", "params", "--modality", modality,
              "--preset", f"configs/{modality}/tiny.yaml"], dest)
    assert yaml.safe_load((dest / "params.yaml").read_text())["image"]["train"]["epochs"] == 1
    _run(["git", "init", "-q"], dest)
    _run(["git", "add", "-A"], dest)
    _run(["git", "commit", "-qm", "init"], dest)
    return dest


def _assert_runs_every_stage(out: str, modalities) -> None:
    for modality in modalities:
        for stage in ("prepare", "train", "sample", "evaluate"):
            assert f"Running stage '{stage}@{modality}'" in out, (stage, modality)


def test_repro_then_noop_then_experiment(repo):
    """The image chain for real (the other modalities: ``-m slow`` below, and each one's own
    pipeline test through Ray + MLflow; their DVC params: the test after this one)."""
    out = _run(["dvc", "repro", "evaluate@image"], repo, timeout=900)
    # Image evaluation does not read the samples, so it does not wait for the sample stage.
    assert "Running stage 'sample@image'" not in out
    out += _run(["dvc", "repro", "sample@image"], repo, timeout=900)
    _assert_runs_every_stage(out, ["image"])
    assert "@molecule" not in out and "@timeseries" not in out
    evaluate = json.loads((repo / "metrics/image/evaluate.json").read_text())
    assert evaluate["iwae_k"] == 10 and evaluate["n_test"] == 256
    # FD in the classifier stage's features: the training set sits closer to the test set than its blurred copy.
    assert "Running stage 'classifier'" in out and evaluate["fd_train_vs_test"] < evaluate["fd_blurred_test"]
    train = json.loads((repo / "metrics/image/train.json").read_text())
    assert train["epochs"] == 1

    # Nothing changed: a second repro runs no stage.
    again = _run(["dvc", "repro", "sample@image", "evaluate@image"], repo)
    assert "Running stage" not in again
    assert "Data and pipelines are up to date" in _run(["dvc", "status", "sample@image", "evaluate@image"], repo)

    # Metrics and plots are readable by DVC.
    metrics = subprocess.run(["dvc", "metrics", "show", "--json"], cwd=repo, capture_output=True, text=True).stdout
    assert "test_nll_iwae" in metrics and "best_val_neg_elbo" in metrics
    plots = subprocess.run(["dvc", "plots", "show", "--json"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert plots.returncode == 0 and "val_neg_elbo" in plots.stdout

    # A parameter change through DVC experiments reruns train and what follows it, not prepare.
    exp = _run(["dvc", "exp", "run", "-S", "image.train.epochs=2", "evaluate@image"], repo, timeout=900)
    assert "Running stage 'train@image'" in exp and "Running stage 'prepare@image'" not in exp
    assert json.loads((repo / "metrics/image/train.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("preset", ["tiny", "quick", "full"])
def test_every_stage_finds_its_deps_and_params_after_switching_presets(preset, tmp_path):
    """What `dvc repro` checks only when it reaches a stage: every params key a stage declares exists in
    params.yaml (also once `vaeflow params` has written another preset), every code dependency exists,
    and no stage tracks a preset file (params.yaml is the one source)."""
    from dvc.repo import Repo

    from vaeflow import cli

    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    for modality in _modalities():
        assert cli.main(["params", "--modality", modality, "--preset", str(ROOT / f"configs/{modality}/{preset}.yaml"),
                         "--params", str(params)]) == 0
    values = yaml.safe_load(params.read_text())
    with contextlib.chdir(ROOT), Repo(str(ROOT)) as repo:  # DVC resolves paths from the working directory
        stages = list(repo.index.stages)
        outs = {str(out.def_path) for stage in stages for out in stage.outs}
        for stage in stages:
            for dep in stage.deps:
                path = str(dep.def_path)
                if path == "params.yaml":
                    for key in dep.params:
                        node = values
                        for part in key.split("."):
                            assert isinstance(node, dict) and part in node, f"params.yaml lacks {key} for {stage.addressing}"
                            node = node[part]
                else:
                    assert not path.startswith("configs/"), f"{stage.addressing} tracks the preset {path}"
                    assert path in outs or (ROOT / path).exists(), f"{stage.addressing} depends on missing {path}"


@pytest.mark.slow
def test_whole_pipeline_every_modality_then_noop(repo):
    """`dvc repro` of every modality (about 4 minutes on 2 cores), then a second one that runs nothing."""
    _assert_runs_every_stage(_run(["dvc", "repro"], repo, timeout=1800), [m for m in _modalities() if m != "image"])
    assert "Running stage" not in _run(["dvc", "repro"], repo)
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)


@pytest.mark.slow
def test_your_own_file_through_dvc_reruns_everything_only_when_it_changes(tmp_path):
    """README's "Your own data" walkthrough (the long time-series example, fewer epochs): dvc add,
    the preset into params.yaml, dvc repro; unchanged, nothing runs; a changed file reruns prepare
    and every stage after it; the MLflow run records the file's DVC md5."""
    import mlflow

    dest = copy_tracked_files(tmp_path)  # the tracking URI in the preset is relative: the repo's own
    _run(["git", "init", "-q"], dest)
    name = "basicmotions_long.csv"
    shutil.copy(dest / "examples/timeseries" / name, dest / "data/raw/timeseries" / name)
    _run(["dvc", "add", "-q", f"data/raw/timeseries/{name}"], dest)
    _run([sys.executable, "-m", "vaeflow.cli", "params", "--modality", "timeseries",
          "--preset", "configs/timeseries/files-long.yaml", "--set", "train.epochs=2",
          "--set", "evaluate.posthoc_steps=20", "--set", "evaluate.posthoc_seeds=1", "--set", "evaluate.iwae_k=4",
          "--set", "sample.n=16"], dest)
    out = _run(["dvc", "repro", "evaluate@timeseries", "sample@timeseries"], dest, timeout=900)
    _assert_runs_every_stage(out, ["timeseries"])
    prepared = json.loads((dest / "metrics/timeseries/prepare.json").read_text())
    assert prepared["rejected"] == 0 and prepared["series_read"] == 24 and prepared["rows_read"] == 2400

    assert "Running stage" not in _run(["dvc", "repro", "evaluate@timeseries", "sample@timeseries"], dest)

    # One value changed in the file: prepare and everything after it run again.
    path = dest / "data/raw/timeseries" / name
    header, first, *rest = path.read_text().splitlines(keepends=True)
    fields = first.rstrip("\n").split(",")
    value = header.rstrip("\n").split(",").index("acc_x")
    fields[value] = str(float(fields[value]) + 0.5)
    path.write_text("".join([header, ",".join(fields) + "\n", *rest]))
    _run(["dvc", "add", "-q", f"data/raw/timeseries/{name}"], dest)
    out = _run(["dvc", "repro", "evaluate@timeseries", "sample@timeseries"], dest, timeout=900)
    _assert_runs_every_stage(out, ["timeseries"])

    md5 = yaml.safe_load((dest / f"data/raw/timeseries/{name}.dvc").read_text())["outs"][0]["md5"]
    client = mlflow.MlflowClient(f"sqlite:///{dest}/mlflow.db")
    experiment = client.get_experiment_by_name("vaeflow-timeseries").experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time DESC"])
    assert len(runs) == 2 and runs[0].data.tags["dvc.source_md5"] == md5
    assert runs[1].data.tags["dvc.source_md5"] != md5  # the first run, on the file before the change
    assert runs[0].data.tags["vaeflow.source_path"] == f"data/raw/timeseries/{name}"


# Each family at tiny sizes, written into params.yaml as the README says (vaeflow params --preset … --set …).
FAMILIES = {
    "vqvae": ("image", "configs/image/vqvae-tiny.yaml", []),
    "vaegan": ("image", "configs/image/tiny.yaml",
               ["model.family=vaegan", "data.binarize=false", "model.vaegan.width=4", "model.vaegan.layers=2",
                "model.vaegan.feature_layer=1", "model.vaegan.fd_every_epochs=1", "model.vaegan.fd_samples=64"]),
    "vrnn": ("timeseries", "configs/timeseries/tiny.yaml",
             ["model.family=vrnn", "model.vrnn.hidden=16", "model.vrnn.feature=8", "sample.length=48"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_runs_through_dvc_repro_then_nothing(family, tmp_path):
    """`model.family` set in params.yaml: dvc repro trains, samples and evaluates that family (images
    with the classifier's FD), registers its model in one MLflow run, and a second repro runs nothing.
    About 1.5 min each on 2 quiet cores (3.4 min while other jobs ran)."""
    import mlflow

    modality, preset, overrides = FAMILIES[family]
    dest = copy_tracked_files(tmp_path)
    _run([sys.executable, "-m", "vaeflow.cli", "params", "--modality", modality, "--preset", preset,
          *[a for o in overrides for a in ("--set", o)]], dest)
    assert yaml.safe_load((dest / "params.yaml").read_text())[modality]["model"]["family"] == family
    _run(["git", "init", "-q"], dest)
    _run(["git", "add", "-A"], dest)
    _run(["git", "commit", "-qm", "init"], dest)
    out = _run(["dvc", "repro", f"evaluate@{modality}", f"sample@{modality}"], dest, timeout=900)
    _assert_runs_every_stage(out, [modality])
    assert "Running stage" not in _run(["dvc", "repro", f"evaluate@{modality}", f"sample@{modality}"], dest)

    evaluate = json.loads((dest / f"metrics/{modality}/evaluate.json").read_text())
    if family == "vaegan":  # val_fd while it trained: the classifier stage ran before train@image
        assert json.loads((dest / "metrics/image/train.json").read_text())["last_val_fd"] > 0
    if modality == "image":
        assert evaluate["fd"] > 0 and 0 <= evaluate["precision"] <= 1 and 0 <= evaluate["recall"] <= 1
    else:
        assert 0 <= evaluate["discriminative_score_train"] <= 0.5
    run_id = json.loads((dest / f"models/{modality}/run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{dest}/mlflow.db")
    run = client.get_run(run_id)
    assert run.data.params["model.family"] == family and run.info.status == "FINISHED"
    assert client.search_model_versions(f"run_id='{run_id}'"), "no model version registered from the run"

"""Processed data and trained models travel between machines through a DVC remote, not by rerunning.

One clone runs the image chain and pushes; a second clone of the same git history pulls, finds every
stage up to date, reproduces the evaluation metrics from the pulled model, and finds the exact data of
the MLflow run from its ``dvc.data_md5`` tag. The remote is a local folder here; S3 and SSH remotes
differ only in ``dvc remote add`` (docs/team.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import GIT_ENV, copy_tracked_files
from tests.test_dvc_pipeline import _run
from vaeflow.tracking import content_hash

# About 55 s on 2 cores (a real dvc repro of the image chain, push, pull, a forced evaluate): -m slow.
pytestmark = pytest.mark.slow

# The image modality's last stages; with --with-deps, DVC takes in prepare and train too (the other
# modalities' stages never ran here, so a plain `dvc pull` would report their outputs missing).
IMAGE_CHAIN = ["sample@image", "evaluate@image"]


def _git(repo, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True,
                          env=os.environ | GIT_ENV).stdout.strip()


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """The first machine: the image chain on the tiny preset, committed and pushed to a local remote.
    Both clones track into one MLflow store, as a team's clones share one tracking server."""
    tmp = tmp_path_factory.mktemp("dvc_remote")
    first, remote = tmp / "first", tmp / "remote"
    first.mkdir()
    copy_tracked_files(first)
    _run([sys.executable, "-m", "vaeflow.cli", "params", "--modality", "image", "--preset", "configs/image/tiny.yaml"], first)
    params = yaml.safe_load((first / "params.yaml").read_text())
    params["image"]["tracking"] |= {"uri": f"sqlite:///{tmp}/team.db", "artifact_location": str(tmp / "team_artifacts")}
    (first / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], first)
    _run(["git", "add", "-A"], first)
    _run(["git", "commit", "-qm", "init"], first)
    _run(["dvc", "repro", *IMAGE_CHAIN], first, timeout=900)
    _run(["dvc", "remote", "add", "-d", "team", str(remote)], first)
    _run(["git", "add", "-A"], first)  # dvc.lock and the remote in .dvc/config; outputs are git-ignored
    _run(["git", "commit", "-qm", "image chain on the tiny preset"], first)
    pushed = _run(["dvc", "push", "--with-deps", *IMAGE_CHAIN], first)
    assert "pushed" in pushed, pushed
    return tmp, first, remote


def test_a_second_clone_pulls_runs_nothing_and_reproduces_the_metrics(pushed):
    tmp, first, remote = pushed
    second = tmp / "second"
    _run(["git", "clone", "-q", str(first), str(second)], tmp)
    assert not (second / "models/image").exists() and not (second / ".dvc/cache").exists()

    _run(["dvc", "pull", "--with-deps", *IMAGE_CHAIN], second)
    for out in ("data/processed/image", "models/image/model.pt", "samples/image", "metrics/image/evaluate.json",
                "plots/image/evaluation"):
        assert (second / out).exists(), out
    assert "Data and pipelines are up to date" in _run(["dvc", "status", "--with-deps", *IMAGE_CHAIN], second)
    again = _run(["dvc", "repro", *IMAGE_CHAIN], second)
    assert "Running stage" not in again, again

    # The pulled model gives the first machine's test metrics again, to the last digit.
    before = json.loads((first / "metrics/image/evaluate.json").read_text())
    out = _run(["dvc", "repro", "--force", "--single-item", "evaluate@image"], second, timeout=600)
    assert "Running stage 'evaluate@image'" in out
    after = json.loads((second / "metrics/image/evaluate.json").read_text())
    assert after == before
    assert "Data and pipelines are up to date" in _run(["dvc", "status", "evaluate@image"], second)


def test_the_runs_data_md5_finds_its_exact_data_in_the_remote(pushed):
    """What docs/team.md shows a reviewer: from the run's ``dvc.data_md5`` tag to the commit whose
    dvc.lock recorded it, then ``dvc get`` of that revision's processed data from the remote."""
    tmp, first, remote = pushed
    run_id = json.loads((first / "models/image/run.json").read_text())["mlflow_run_id"]
    tags = MlflowClient(tracking_uri=f"sqlite:///{tmp}/team.db").get_run(run_id).data.tags
    md5 = tags["dvc.data_md5"]
    assert md5.endswith(".dir")
    # DVC 3 keeps a folder's listing at files/md5/<first two hex digits>/<the rest> in the remote.
    assert (remote / "files/md5" / md5[:2] / md5[2:]).is_file()

    rev = _git(first, "log", "--format=%H", "-S", md5, "--", "dvc.lock").splitlines()[-1]
    got = tmp / "reviewer_copy"
    _run(["dvc", "get", str(first), "data/processed/image", "--rev", rev, "-o", str(got)], tmp)
    assert content_hash(got) == tags["vaeflow.data_sha256"]

"""What a reviewer sees: an image job logged to a live MLflow server, then its UI driven in Debian's
headless Chromium (through Playwright), logged in as a user where the server asks for one.

Used by the SQLite server test (tests/test_mlflow_server.py) and the PostgreSQL + basic-auth one
(tests/test_team_server.py), so both check the same pages.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tiny_config
from vaeflow import stages

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# No background requests to the outside (this machine has no network), no GPU, no sandbox (root).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The UI's first load compiles a large bundle on 2 shared cores.
WAIT_MS = 90_000

needs_chromium = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                    reason="Debian's chromium is not installed")


def pipeline_on(url: str, tiny_data: Path, root: Path, *overrides: str) -> tuple[Any, dict[str, Any]]:
    """train → sample → classifier → evaluate of the tiny image preset into the server at ``url`` (credentials, if
    any, from the environment); the resolved config and models/image/run.json."""
    (root / "data/processed").mkdir(parents=True)
    (root / "data/processed/image").symlink_to(tiny_data / "data/processed/image")
    config = tiny_config(root, f"tracking.uri={url}", "train.epochs=2", *overrides)
    paths = stages.Paths.for_modality("image", root)
    stages.train(config, paths, progress=False)
    stages.sample(config, paths)
    stages.classifier(config, paths)
    stages.evaluate(config, paths, progress=False)
    return config, json.loads((paths.model / "run.json").read_text())


def review_in_browser(url: str, config: Any, run: dict[str, Any], shots: Path,
                      credentials: tuple[str, str] | None = None) -> None:
    """Open the experiments list, the run (metrics, then the sample grid and the per-epoch CSV among
    its artifacts) and the registered model's page, as a reviewer would; fail on what is missing.
    A screenshot of each page is saved under ``shots``; the browser logs in with ``credentials``."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "CI installs Debian's chromium (see .ci/run); it is missing"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        login = {"http_credentials": {"username": credentials[0], "password": credentials[1]}} if credentials else {}
        page = browser.new_context(viewport={"width": 1400, "height": 1000}, **login).new_page()
        page.set_default_timeout(WAIT_MS)

        def visit(route: str, name: str, *texts: str) -> None:
            page.goto(f"{url}/#/{route}")
            for text in texts:
                page.get_by_text(text, exact=False).first.wait_for()
            page.screenshot(path=str(shots / f"{name}.png"))

        visit("experiments", "experiments", config.tracking.experiment)
        # The experiment, opened with the workflow vaeflow's links name, lands on its training runs.
        experiment_id = run["mlflow_experiment_id"]
        visit(f"experiments/{experiment_id}?workflowType=machine_learning", "training_runs", run["ray_run"].split("/")[-1])
        assert f"experiments/{experiment_id}/runs" in page.url, page.url
        # The link run.json records (and the train stage logs) opens the run itself.
        assert run["mlflow_ui"].startswith(url)
        page.goto(run["mlflow_ui"])
        for text in ("Finished", "val_neg_elbo", "test_nll_iwae", "git_commit", config.tracking.registered_model):
            page.get_by_text(text, exact=False).first.wait_for()
        page.screenshot(path=str(shots / "run.png"))
        run_page = f"experiments/{experiment_id}/runs/{run['mlflow_run_id']}"
        visit(f"{run_page}/artifacts", "artifacts", "evaluation", "plots", "samples")
        page.get_by_text("samples", exact=True).first.click()
        page.get_by_text("prior_samples.png", exact=True).first.click()
        grid = page.locator("img[alt$='prior_samples.png']").first  # a blob: URL fetched with the login
        grid.wait_for()
        assert grid.evaluate("img => img.complete && img.naturalWidth > 100"), "the sample grid did not load"
        page.screenshot(path=str(shots / "sample_grid.png"))
        page.get_by_text("plots", exact=True).first.click()
        page.get_by_text("history.csv", exact=True).first.click()
        page.get_by_text("val_neg_elbo", exact=False).last.wait_for()  # the CSV's header, previewed
        page.screenshot(path=str(shots / "history_csv.png"))
        visit(f"models/{config.tracking.registered_model}", "model",
              f"Version {run['model_version']}", config.tracking.alias)
        browser.close()

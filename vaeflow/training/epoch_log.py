"""Epoch metrics to the job's MLflow run, from the Ray Train controller (a Ray Train callback).

Kept apart from ``vaeflow.training.ray`` so that only the controller and the driver import MLflow,
never the training workers; and the controller imports it at the first report, not when it starts
(unpickling this callback is part of the controller's start, which the workers' start waits on).
Nothing here imports torch: on a private cluster the controller runs without it (``backend``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import ray.train

log = logging.getLogger(__name__)

# Beside each checkpoint: the epoch rows so far, which the controller reads without importing torch.
HISTORY_FILE = "history.json"


def checkpoint_history(folder: str | Path) -> list[dict[str, Any]]:
    """The epoch rows a checkpoint folder holds: its JSON copy, or (a checkpoint written before
    there was one) the checkpoint itself, which needs torch."""
    path = Path(folder) / HISTORY_FILE
    if path.is_file():
        return json.loads(path.read_text())
    from vaeflow.training.checkpoint import load

    return load(folder)["history"]


class EpochMetricsToMlflow(ray.train.UserCallback):
    """Logs each epoch's metrics to the job's MLflow run from the Ray Train controller.

    The controller calls ``after_report`` once it has committed a report (and registered its
    checkpoint), so an epoch lost to a worker failure before that point is redone and logged once
    afterwards. Steps already in the run are not logged again; steps missing from it (a driver
    killed between committing a checkpoint and logging its epoch) are filled in from the history
    in the first checkpoint this job sees.

    The controller never waits for the tracking server: epochs it cannot send stay pending, in order,
    and go out at the next report once the server answers (after re-reading which steps reached the
    run, since a batch may have landed before the connection broke). Unreachable for longer than
    ``limit_s``, it stops the job with :class:`tracking.TrackingUnavailable`; what the run still
    lacks at the end of a job the driver fills in (``tracking.log_missing_epochs``).
    """

    def __init__(self, tracking_uri: str, run_id: str, score: str, limit_s: float, checkpoints: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.score = score  # a metric every epoch row holds
        self.limit_s = limit_s
        self.checkpoints = checkpoints
        self._logged: set[int] | None = None  # steps in the run; None: read them (again) first
        self._seeded = False
        self._pending: list[dict[str, Any]] = []
        self._down_since: float | None = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not self._seeded and checkpoint is not None:
            with checkpoint.as_directory() as d:
                self._pending.extend(checkpoint_history(d))
        self._seeded = True
        row = metrics[0]  # every rank reports the same all-reduced row
        if not row.get("partial"):  # a mid-epoch checkpoint: the epoch's metrics come at its end
            self._pending.append(row)
        from mlflow.tracking import MlflowClient

        from vaeflow import tracking  # imports MLflow (see the module docstring)

        tracking.fail_fast_http()
        try:
            self._send(MlflowClient(tracking_uri=self.tracking_uri))
        except Exception as exc:
            if not tracking.unreachable(exc):
                raise
            self._logged = None
            now = time.monotonic()
            self._down_since = self._down_since or now
            if now - self._down_since > self.limit_s:
                raise tracking.TrackingUnavailable(
                    f"MLflow at {self.tracking_uri} unreachable for {now - self._down_since:.0f} s during training "
                    f"(tracking.outage_limit_s = {self.limit_s:g}); checkpoints are in {self.checkpoints}: start the "
                    f"server again, then rerun the same command to resume into run {self.run_id}"
                ) from None
            log.warning("MLflow at %s unreachable; %d epoch(s) kept to send at the next report",
                        self.tracking_uri, len(self._pending))
            return
        if self._down_since is not None:
            log.warning("MLflow at %s answers again after %.0f s; the kept epochs are sent",
                        self.tracking_uri, time.monotonic() - self._down_since)
        self._down_since = None

    def _send(self, client: Any) -> None:
        from vaeflow import tracking

        if self._logged is None:
            self._logged = tracking.logged_steps(client, self.run_id, self.score)
        while self._pending:
            row = self._pending[0]
            step = int(row["epoch"])
            if step not in self._logged:
                tracking.log_metrics(client, self.run_id, {k: v for k, v in row.items() if k != "epoch"}, step=step)
                self._logged.add(step)
            self._pending.pop(0)

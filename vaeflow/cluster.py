"""Submitting vaeflow commands to a running Ray cluster through Ray's job API (``JobSubmissionClient``).

The job runs ``vaeflow <command …>`` on the cluster with the working directory uploaded as its
``runtime_env`` (data, runs and caches excluded). Its ``python`` is the one on the PATH where
``ray start`` ran, so vaeflow must be installed there. With token authentication (``RAY_AUTH_MODE=token``,
the default of current Ray), the client reads the same token as the ``ray`` CLI.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from vaeflow.config import CREDENTIAL_ENV

# Never uploaded with the working directory: data, outputs, runs and caches.
EXCLUDES = ["data/", "models/", "samples/", "metrics/", "plots/", "mlruns/", "mlartifacts/", "ray_results/",
            "*.db", ".git/", ".dvc/cache/", "__pycache__/", "*.egg-info/"]
SUBMISSION_ENV = "VAEFLOW_SUBMISSION_ID"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
AGENT_WAIT_S = 120  # how long a submission waits for a just-started head's job agent


@dataclasses.dataclass
class JobResult:
    submission_id: str
    status: str
    logs_tail: str
    mlflow_run_id: str | None


def submit(
    address: str,
    command: Sequence[str],
    *,
    working_dir: str = ".",
    wait: bool = True,
    timeout_s: float = 24 * 3600,
    on_status: Callable[[str], Any] = print,
) -> JobResult:
    """Submit ``vaeflow <command>`` as a Ray job; optionally wait for it and return its status and log tail.

    Environment variables starting with ``VAEFLOW_`` (e.g. the data mirror) and the MLflow credentials
    (``MLFLOW_TRACKING_USERNAME`` …) travel with the job in its runtime_env.
    """
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    submission_id = f"vaeflow-{uuid.uuid4().hex[:12]}"
    # MLflow credentials travel too (never in the entrypoint or the config): the job logs as this user.
    env = {k: v for k, v in os.environ.items() if k.startswith("VAEFLOW_") or k in CREDENTIAL_ENV}
    env[SUBMISSION_ENV] = submission_id
    # A freshly started head answers before its job agent is up ("No available agent …, please try
    # again later"): retry that for a while, fail on anything else at once.
    patience = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            client.submit_job(
                entrypoint=shlex.join(["vaeflow", *command]),
                submission_id=submission_id,
                runtime_env={"working_dir": working_dir, "excludes": EXCLUDES, "env_vars": env},
            )
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > patience:
                raise
            time.sleep(2)
    on_status(f"submitted {submission_id} to {address}")
    status = str(client.get_job_status(submission_id).value)
    if not wait:
        return JobResult(submission_id, status, "", None)
    deadline, last = time.monotonic() + timeout_s, None
    while status not in TERMINAL and time.monotonic() < deadline:
        if status != last:
            on_status(f"{submission_id}: {status}")
            last = status
        time.sleep(2)
        status = str(client.get_job_status(submission_id).value)
    logs = client.get_job_logs(submission_id)
    found = re.findall(r"MLflow run ([0-9a-f]{32})", logs)
    return JobResult(submission_id, status, "\n".join(logs.splitlines()[-30:]), found[-1] if found else None)

"""A team's tracking server for tests: a private PostgreSQL cluster and `mlflow server` with basic auth on it.

Both listen on 127.0.0.1 only, live in temp folders and are stopped afterwards (only the processes
started here). Import the fixtures into a test module: ``from tests.team_server import postgres, team_server``.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port, stop_process_group

ADMIN, ADMIN_FIRST_PASSWORD, ADMIN_PASSWORD = "admin", "first-admin-pw-0", "rotated-admin-pw-1"
# name → password; alice and bob may create experiments and models, reader only gets default READ.
USERS = {"alice": "alice-pw-Q7s9", "bob": "bob-pw-K2m4-x7", "reader": "reader-pw-Z8x1"}


def pg_bin(name: str) -> str:
    """A PostgreSQL program from the PATH or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        pytest.fail(f"PostgreSQL's {name} not found: apt-get install postgresql", pytrace=False)
    return found


@dataclasses.dataclass
class Postgres:
    port: int
    data: Path

    def uri(self, db: str) -> str:
        # psycopg2 named: SQLAlchemy 2.1's plain postgresql:// means psycopg 3, which is not installed.
        return f"postgresql+psycopg2://vaeflow@127.0.0.1:{self.port}/{db}"


def _as_postgres() -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@pytest.fixture(scope="module")
def postgres():
    """A fresh PostgreSQL cluster on 127.0.0.1 (trust auth, local only) with databases ``tracking`` and ``auth``."""
    # Not under pytest's temp root: that is private to root, and the postgres user must reach its folder.
    d = Path(tempfile.mkdtemp(prefix="vaeflow-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(d, "postgres")
    data, port = d / "data", free_port()

    def run(*cmd: str) -> None:
        proc = subprocess.run([*_as_postgres(), *cmd], capture_output=True, text=True)
        if proc.returncode:
            pytest.fail(f"{Path(cmd[0]).name} failed: {proc.stderr.strip()[-1500:]}", pytrace=False)
    run(pg_bin("initdb"), "-D", str(data), "-U", "vaeflow", "--auth=trust", "-E", "UTF8")
    run(pg_bin("pg_ctl"), "-D", str(data), "-l", str(d / "postgres.log"), "-w", "start",
        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {d}")
    try:
        for db in ("tracking", "auth"):
            run(pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "vaeflow", db)
        yield Postgres(port, data)
    finally:
        run(pg_bin("pg_ctl"), "-D", str(data), "-w", "stop", "-m", "fast")
        shutil.rmtree(d, ignore_errors=True)


@dataclasses.dataclass
class TeamServer:
    url: str
    log: Path
    artifacts: Path

    def env(self, user: str | None) -> dict[str, str]:
        """os.environ with the credentials of ``user`` (none for None)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        if user is not None:
            env |= {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": USERS.get(user, ADMIN_PASSWORD)}
        return env


def wait_until_healthy(proc: subprocess.Popen, url: str, log_file: Path, timeout_s: float = 120) -> None:
    """Until the `mlflow server` ``proc`` answers /health; a server that exits or never answers fails
    the test with its log's tail (and is stopped)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                pytest.fail("mlflow server did not start: " + log_file.read_text()[-2000:], pytrace=False)
            time.sleep(0.5)


def start_mlflow(d: Path, backend: str, auth_db: str) -> tuple[subprocess.Popen, str]:
    (d / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {auth_db}\nadmin_username = {ADMIN}\nadmin_password = {ADMIN_FIRST_PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(d / "auth.ini")
    # The auth app's CSRF protection needs a static key (the server refuses to start without one).
    env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secrets.token_hex(16)
    proc = subprocess.Popen(
        ["mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", backend, "--artifacts-destination", str(d / "artifacts")],
        stdout=open(d / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(proc, url, d / "server.log")
    return proc, url


@pytest.fixture(scope="module")
def team_server(postgres, tmp_path_factory):
    """`mlflow server --app-name basic-auth` on PostgreSQL; the admin password rotated, USERS created."""
    from mlflow.server.auth.client import AuthServiceClient

    d = tmp_path_factory.mktemp("team_mlflow")
    proc, url = start_mlflow(d, postgres.uri("tracking"), postgres.uri("auth"))
    try:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = ADMIN, ADMIN_FIRST_PASSWORD
        auth = AuthServiceClient(url)
        auth.update_user_password(ADMIN, ADMIN_PASSWORD, current_password=ADMIN_FIRST_PASSWORD)
        os.environ["MLFLOW_TRACKING_PASSWORD"] = ADMIN_PASSWORD
        for name, password in USERS.items():
            auth.create_user(name, password)
        yield TeamServer(url, d / "server.log", d / "artifacts")
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
        stop_process_group(proc)

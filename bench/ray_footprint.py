"""What Ray costs one training job on one machine: a lean private cluster, Ray's full one, no Ray.

Three trainers of the same model, data subset, seed, batch, epochs and CPU threads, each in a fresh
spawned process, taking turns going first over ``--repeats`` rounds:

  * ``bare``: one process, a plain ``DataLoader`` and vaeflow's epoch function, a validation pass
    and a ``torch.save`` checkpoint per epoch (``bench/overhead.py: bare``) — the plain PyTorch
    trainer that pythae and most tutorials are (``bench/pythae_compare.py`` compares pythae itself);
  * ``lean``: vaeflow's real training path (``vaeflow.training.ray.fit`` in an MLflow run on a
    temporary SQLite file) on the private cluster ``init_ray`` starts: no dashboard, no metrics,
    no prestarted workers, none of Ray Train's placement-group cleaner, dataset manager and
    autoscaler actors (``docs/cluster.md``);
  * ``full``: the same with ``VAEFLOW_RAY_LEAN=0``: the private cluster with all of Ray's parts, as
    vaeflow started it before;
  * ``attached`` (only when asked for with ``--variants``): a cluster that outlives its jobs. The
    measuring process starts a head as ``docs/cluster.md`` shows (``ray start --head --block``,
    dashboard and job server on 127.0.0.1, token auth), then runs ``--jobs-per-cluster`` jobs one
    after another, each a fresh driver process with ``RAY_ADDRESS`` set (what a second ``vaeflow
    train`` or a later ``dvc repro`` stage would do), then stops the head. The head's start and stop
    are reported apart (paid once per machine, not per job); a job's outside seconds are its own
    driver's wall time minus its training passes, and the row is the last job's (the first may pay
    for a cold page cache). Memory is the whole tree: head, its daemons and actors, and the job.

For each: the training pass per epoch (median of epochs 2…n, from the epoch rows), the seconds
outside the training passes (process wall − the sum of all training passes: interpreter and
imports, cluster start, MLflow run, worker start-up, validation, checkpoints, shut-down; the
SQLite tracking store is created before the first job, so no job pays its schema migration), the peak
**PSS** summed over the trainer's process tree (``/proc/<pid>/smaps_rollup``: shared pages split
among the processes that map them, so shared libraries and Ray's object store count once) and the
summed RSS, and the CPU seconds of the tree. Ratios are against ``bare`` per round (median over
rounds). For the last ``lean`` and ``full`` rounds the script also prints where the memory and CPU
went (each process's peak PSS and CPU seconds) and when each process appeared after ``fit`` was
called, which is where a start-up second goes.

    python bench/ray_footprint.py                 # image quick model, 10k images, 4 epochs, 3 rounds: ~15 min on 2 cores
    python bench/ray_footprint.py --workers 2 --cpus-per-worker 1 --repeats 2
    python bench/ray_footprint.py --variants bare lean attached    # is a long-lived cluster cheaper per job?
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import PssTreeMonitor, median, print_table, run_monitored, write_json

VARIANTS = ("bare", "lean", "full", "attached")
DEFAULT_VARIANTS = ("bare", "lean", "full")


# Titles a Ray worker process wears for a moment before its actor's own: an idle pooled worker, and
# a Train worker running one of the backend's set-up functions (``ray::execute.<function>``, which
# can last seconds while that function imports torch). Keep sampling until the actor's title shows.
_PASSING_TITLES = ("ray::IDLE", "ray::execute")


class TimelineMonitor(PssTreeMonitor):
    """``PssTreeMonitor`` plus when each process of the tree was first seen (seconds since start)."""

    def __init__(self, pid: int, every_s: float = 0.2):
        super().__init__(pid, every_s)
        self.started = time.time()
        self.first_seen: dict[int, float] = {}
        self.commands: dict[int, str] = {}  # the whole command line (``names`` keeps 120 characters)

    def _sample(self) -> None:
        super()._sample()
        now = time.time() - self.started
        for pid in self.peak:
            self.first_seen.setdefault(pid, now)
            known = self.commands.get(pid, "")
            if not known.startswith("ray::") or known.startswith(_PASSING_TITLES):
                try:
                    self.commands[pid] = " ".join(self._psutil.Process(pid).cmdline())
                except self._psutil.Error:
                    self.commands.setdefault(pid, self.names.get(pid, "?"))


def role(cmd: str, is_root: bool = False) -> str:
    """A short name for a process of the tree: the Ray actor's title, or the program."""
    if is_root:
        return "driver (the job's process)"
    if cmd.startswith("ray::"):
        return re.split(r"[ .]", cmd)[0]
    if " start --head" in cmd:
        return "ray start --head (the head)"
    for name in ("gcs_server", "raylet", "dashboard/agent.py", "dashboard.py", "log_monitor", "monitor.py",
                 "runtime_env", "ray-dashboard-"):
        if name in cmd:
            return name
    return cmd.split()[0].rsplit("/", 1)[-1] if cmd else "?"


def _train(variant: str, args: dict[str, Any], work: Path) -> dict[str, Any]:
    """One job in this (fresh) process; times measured from the process's own start."""
    if variant == "full":
        os.environ["VAEFLOW_RAY_LEAN"] = "0"
    from bench.overhead import _config, bare

    overrides = [f"train.epochs={args['epochs']}", f"data.limit_train={args['train_limit']}",
                 "train.keep_checkpoints=1", f"train.num_workers={args['workers']}",
                 f"train.cpus_per_worker={args['cpus_per_worker']}"]
    config = _config("image", args["preset"], work, *overrides)
    processed = work / "data/processed/image"
    if variant == "bare":
        run = bare(config, processed, args["workers"] * args["cpus_per_worker"], work)
        return {"train_s": run["train_s"], "epoch_s": run["epoch_s"]}
    from vaeflow import tracking
    from vaeflow.training.ray import fit, init_ray

    t0 = time.time()
    init_ray(num_cpus=args["workers"] * args["cpus_per_worker"])
    t1 = time.time()
    run_id = tracking.start_run(config, {}, run_name=variant)
    t2 = time.time()
    result = fit(config, processed, run_name=f"{variant}-{os.getpid()}", run_id=run_id, progress=False)
    t3 = time.time()
    return {"train_s": [r["epoch_time_s"] for r in result.history], "ray_init_s": t1 - t0,
            "mlflow_run_s": t2 - t1, "fit_s": t3 - t2, "fit_called_at": t2, "pid": os.getpid()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _attached(args: dict[str, Any], work: Path) -> dict[str, Any]:
    """A ``ray start`` head in this process's tree, ``args['jobs_per_cluster']`` jobs on it one after
    another (each a spawned driver process), then the head stopped; the last job's figures."""
    port, dashboard = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VAEFLOW_RAY_LEAN")}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    log = work / f"head_{os.getpid()}.log"
    started = time.time()
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", f"--num-cpus={args['workers'] * args['cpus_per_worker']}",
         "--disable-usage-stats", f"--dashboard-agent-listen-port={_free_port()}",
         f"--ray-client-server-port={_free_port()}"],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while "Ray runtime started" not in log.read_text():
            if head.poll() is not None or time.time() - started > 180:
                raise RuntimeError("the Ray head did not start: " + log.read_text()[-2000:])
            time.sleep(0.2)
        head_start_s = time.time() - started
        os.environ.update({"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "token",
                           "RAY_AUTH_TOKEN": env["RAY_AUTH_TOKEN"]})
        jobs = []
        for i in range(args["jobs_per_cluster"]):
            name = work / f"attached_job_{os.getpid()}_{i}"
            result, _, wall = run_monitored(_train, ("attached", args, work), name.with_suffix(".json"),
                                            name.with_suffix(".log"), f"attached job {i + 1}", monitor=None)
            jobs.append(result | {"wall_s": wall})
    finally:
        stopping = time.time()
        # This head's process group only (never `ray stop`: it stops every cluster on the machine). On
        # SIGTERM a head drains for up to 30 s; there is nothing to drain here, so 5 s, then SIGKILL.
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        head_stop_s = time.time() - stopping
    return jobs[-1] | {"head_start_s": head_start_s, "head_stop_s": head_stop_s, "jobs": jobs}


def _job_in_process(variant: str, args: dict[str, Any], work: Path) -> dict[str, Any]:
    """What one spawned measurement process runs: a job (bare, lean, full), or a head and its jobs."""
    return _attached(args, work) if variant == "attached" else _train(variant, args, work)


def run_variant(variant: str, args: dict[str, Any], work: Path, round_: int) -> dict[str, Any]:
    """One job in a spawned process while its process tree is sampled."""
    load = os.getloadavg()[0]
    result, monitor, wall = run_monitored(_job_in_process, (variant, args, work), work / f"{variant}_{round_}.json",
                                          work / f"{variant}_{round_}.log", variant, TimelineMonitor)
    root = monitor.root.pid
    steady = median(result["train_s"][1:] or result["train_s"])
    if variant == "attached":  # one job's driver, not the head's life
        wall = result["wall_s"]
    summary = monitor.summary()
    processes = []
    drivers = {job["pid"]: i for i, job in enumerate(result.get("jobs", []))}
    for pid, first in sorted(monitor.first_seen.items(), key=lambda kv: kv[1]):
        cmd = monitor.commands.get(pid, "?")
        if variant == "attached" and (pid == root or pid in drivers):  # the root only starts the head
            name = f"driver (job {drivers[pid] + 1})" if pid in drivers else "bench process (runs the head)"
        else:
            name = role(cmd, pid == root)
        processes.append({"process": name, "pid": pid, "peak_pss_mb": monitor.peak_pss.get(pid, 0) / 1024,
                          "cpu_s": monitor.cpu.get(pid, 0.0),
                          # seconds after fit() was called (negative: started before it)
                          "appeared_after_fit_s": (monitor.started + first - result["fit_called_at"])
                          if "fit_called_at" in result else None})
    return {
        "variant": variant, "round": round_, "wall_s": wall, "train_s": result["train_s"], "steady_train_s": steady,
        "outside_train_s": wall - sum(result["train_s"]), "peak_pss_tree_mb": summary["peak_pss_tree_mb"],
        "peak_rss_tree_mb": summary["peak_rss_tree_mb"], "cpu_s_tree": summary["cpu_s_tree"],
        "processes_seen": summary["processes_seen"], "load_avg_1min_before": load,
        **{k: result[k] for k in ("ray_init_s", "mlflow_run_s", "fit_s", "head_start_s", "head_stop_s", "jobs")
           if k in result},
        "processes": processes,
    }


def _where(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Per role: processes, summed peak PSS, CPU seconds, first appearance after fit()."""
    roles: dict[str, dict[str, Any]] = {}
    for p in run["processes"]:
        r = roles.setdefault(p["process"], {"process": p["process"], "n": 0, "peak_pss_mb": 0.0, "cpu_s": 0.0,
                                            "first_after_fit_s": p["appeared_after_fit_s"]})
        r["n"] += 1
        r["peak_pss_mb"] += p["peak_pss_mb"]
        r["cpu_s"] += p["cpu_s"]
    return sorted(roles.values(), key=lambda r: -r["peak_pss_mb"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="quick", help="image preset under configs/image/ (model and data settings)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-limit", type=int, default=10000, help="training images (a seeded subset)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpus-per-worker", type=int, default=min(2, os.cpu_count() or 1),
                   help="CPUs of each Ray worker (bare: workers × this many torch threads)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    p.add_argument("--jobs-per-cluster", type=int, default=2,
                   help="attached: jobs run one after another on one `ray start` head (the last is reported)")
    p.add_argument("--out", help="JSON path (default bench/results/ray_footprint.json)")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (epoch 1 is warm-up)")
    if "bare" not in args.variants:
        p.error("--variants must include bare (the ratios are against it)")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "variants", "repeats")}

    from bench.overhead import _config
    from vaeflow import stages, tracking

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vaeflow-footprint-") as tmp:
        work = Path(tmp)
        config = _config("image", args.preset, work, f"data.limit_train={args.train_limit}")
        print(f"preparing {args.train_limit} training images ({args.preset} preset)", flush=True)
        stages.prepare(config, stages.Paths.for_modality("image", work), progress=False)
        # The tracking store is created (its schema migrated, seconds on SQLite) once here, not by
        # whichever Ray variant happens to run first.
        tracking.client(config.tracking).search_experiments()
        for r in range(args.repeats):
            order = args.variants[r % len(args.variants):] + args.variants[:r % len(args.variants)]  # take turns first
            for variant in order:
                print(f"round {r + 1}/{args.repeats}: {variant}", flush=True)
                runs.append(run_variant(variant, settings, work, r))

    def ratio(variant: str, key: str) -> float:
        """Median over rounds of (variant / bare) in the same round."""
        per_round = [next(x for x in runs if x["variant"] == variant and x["round"] == r)[key]
                     / next(x for x in runs if x["variant"] == "bare" and x["round"] == r)[key] for r in range(args.repeats)]
        return median(per_round)

    rows = []
    for v in args.variants:
        mine = [x for x in runs if x["variant"] == v]
        rows.append({
            "trainer": v, "train_pass_s": median([x["steady_train_s"] for x in mine]),
            "vs_bare": ratio(v, "steady_train_s"),
            "outside_train_s": median([x["outside_train_s"] for x in mine]),
            "extra_outside_s": median([x["outside_train_s"] for x in mine]) - median(
                [x["outside_train_s"] for x in runs if x["variant"] == "bare"]),
            "peak_pss_mb": median([x["peak_pss_tree_mb"] for x in mine]), "pss_vs_bare": ratio(v, "peak_pss_tree_mb"),
            "peak_rss_mb": median([x["peak_rss_tree_mb"] for x in mine]),
            "cpu_s_tree": median([x["cpu_s_tree"] for x in mine]), "processes": median([x["processes_seen"] for x in mine]),
        })
    print_table(rows, f"Per job, medians over {args.repeats} rounds (ratios: per round against bare, then the median)")
    for v in ("lean", "full", "attached"):
        last = [x for x in runs if x["variant"] == v]
        if last:
            x = last[-1]
            print_table(_where(x), f"{v}, round {x['round'] + 1}: where the memory and CPU went "
                                   f"(ray.init {x['ray_init_s']:.1f} s, MLflow run {x['mlflow_run_s']:.1f} s, fit {x['fit_s']:.1f} s)")
    record = {"settings": vars(args) | {"out": None}, "rows": rows, "runs": runs}
    write_json("ray_footprint", record, args.out)
    return record


if __name__ == "__main__":
    main()

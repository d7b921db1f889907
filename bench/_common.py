"""What every benchmark script shares: machine description, medians, a printed table and a JSON record.

Figures are ratios or paired comparisons measured side by side in one run (these machines are
shared and noisy); each script writes its table to ``bench/results/<name>.json`` (or ``--out``).
"""

from __future__ import annotations

import datetime as _dt
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """The facts a reader needs to put the numbers in context."""
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": commit or None,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    """Rows of dicts as an aligned text table (floats to 4 significant digits)."""
    if not rows:
        return
    cols = list(dict.fromkeys(k for row in rows for k in row))

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    cells = [[fmt(row.get(c, "")) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def write_json(name: str, record: dict[str, Any], out: str | Path | None = None) -> Path:
    """Write ``record`` (plus the machine facts) atomically to ``out`` or ``bench/results/<name>.json``."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"benchmark": name, "machine": machine(), **record}, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    print(f"\nwrote {path}")
    return path


class Clock:
    """Wall and CPU seconds of a block: CPU of this process plus its waited-for children (pool workers).

    On a shared, oversubscribed machine the CPU seconds still say what one core does per molecule,
    and CPU / wall says how many cores the block actually got.
    """

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), self._cpu_now()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = self._cpu_now() - self._cpu

    @staticmethod
    def _cpu_now() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime


WORKER_MARK = "RayTrainWorker"  # in the process title of a Ray Train worker


class TreeMonitor:
    """Samples a process and all its descendants: peak summed RSS, per-process peaks and CPU seconds.

    Args:
        pid: the root process (None: this one).
        every_s: sampling interval.
    """

    def __init__(self, pid: int | None = None, every_s: float = 0.2):
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(pid)  # None: this process
        self.every_s = every_s
        self.peak_tree = 0
        self.peak: dict[int, int] = {}  # pid → peak RSS
        self.cpu: dict[int, float] = {}  # pid → last seen user + system CPU seconds
        self.names: dict[int, str] = {}
        self.nice: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        ps = self._psutil
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except ps.Error:
            return
        total = 0
        self._begin_sample()
        for p in procs:
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    cpu = p.cpu_times()
                    if p.pid not in self.names or WORKER_MARK not in self.names[p.pid]:
                        self.names[p.pid] = " ".join(p.cmdline())[:120]
                        self.nice[p.pid] = p.nice()
            except ps.Error:  # exited between listing and reading
                continue
            total += rss
            self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
            self.cpu[p.pid] = cpu.user + cpu.system
            self._visit(p.pid)
        self.peak_tree = max(self.peak_tree, total)
        self._end_sample()

    def _begin_sample(self) -> None:
        """Hook: a pass over the tree starts."""

    def _visit(self, pid: int) -> None:
        """Hook: one live process of the tree, after its RSS and CPU were read."""

    def _end_sample(self) -> None:
        """Hook: the pass is over."""

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every_s)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        mb = 1 / 2**20
        workers = [pid for pid, name in self.names.items() if WORKER_MARK in name]
        out = {"peak_rss_tree_mb": self.peak_tree * mb, "cpu_s_tree": sum(self.cpu.values()),
               "processes_seen": len(self.peak)}
        if workers:
            out["peak_rss_worker_mb"] = max(self.peak[p] for p in workers) * mb
            out["cpu_s_worker"] = sum(self.cpu[p] for p in workers)
            out["worker_nice"] = max(self.nice[p] for p in workers)  # Ray starts workers at niceness 15
        top = sorted(self.peak, key=self.peak.get, reverse=True)[:10]
        out["largest_processes"] = [{"cmd": self.names.get(p, "?"), "peak_rss_mb": self.peak[p] * mb,
                                     "cpu_s": self.cpu.get(p, 0.0)} for p in top]
        return out


PSS_FIELDS = ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem")  # kB lines of /proc/<pid>/smaps_rollup


def read_pss_kb(pid: int) -> dict[str, int] | None:
    """The PSS lines of ``/proc/<pid>/smaps_rollup`` in kB; None where the process is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:  # exited, or not ours to read
        return None
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in PSS_FIELDS:
            out[key] = int(rest.split()[0])
    return out if "Pss" in out else None


class PssTreeMonitor(TreeMonitor):
    """``TreeMonitor`` (summed RSS, CPU seconds) plus the peak summed PSS of the same process tree.

    Each sample lists the root and its descendants (psutil ``children(recursive=True)``) and sums the
    ``Pss:`` line of every one's ``/proc/<pid>/smaps_rollup``: shared pages are split among the
    processes that map them, so a tree's shared libraries and shared memory count once. The sampling
    thread runs at niceness 19 so that it takes no CPU the trainers want; its CPU seconds are reported.

    Args:
        pid: the root process (None: this one).
        every_s: sampling interval.
    """

    def __init__(self, pid: int | None = None, every_s: float = 0.2):
        super().__init__(pid, every_s)
        self.peak_pss_tree = 0  # kB
        self.peak_pss_parts: dict[str, int] = {}  # the PSS lines summed at the peak sample, kB
        self.peak_pss: dict[int, int] = {}  # pid → peak PSS, kB
        self.samples = 0
        self.sampling_cpu_s = 0.0  # this thread's own CPU time: what the measuring costs

    def _run(self) -> None:
        # The sampler yields to the trainers: on a machine with no spare core, reading smaps_rollup
        # (a walk of each process's page tables, ~1 ms per process) would otherwise slow them down.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
        super()._run()

    def _sample(self) -> None:
        cpu_start = time.thread_time()
        super()._sample()
        self.samples += 1
        self.sampling_cpu_s += time.thread_time() - cpu_start

    def _begin_sample(self) -> None:
        self._parts = dict.fromkeys(PSS_FIELDS, 0)

    def _visit(self, pid: int) -> None:
        pss = read_pss_kb(pid)
        if pss is None:
            return
        for key, value in pss.items():
            self._parts[key] += value
        self.peak_pss[pid] = max(self.peak_pss.get(pid, 0), pss["Pss"])

    def _end_sample(self) -> None:
        if self._parts["Pss"] > self.peak_pss_tree:
            self.peak_pss_tree, self.peak_pss_parts = self._parts["Pss"], self._parts

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        mb = 1 / 1024  # kB → MB (MiB, as the RSS figures)
        out |= {"peak_pss_tree_mb": self.peak_pss_tree * mb,
                "peak_pss_tree_parts_mb": {k.lower(): v * mb for k, v in self.peak_pss_parts.items()},
                "monitor_samples": self.samples, "monitor_cpu_s": self.sampling_cpu_s}
        workers = [pid for pid, name in self.names.items() if WORKER_MARK in name and pid in self.peak_pss]
        if workers:
            out["peak_pss_worker_mb"] = max(self.peak_pss[p] for p in workers) * mb
        top = sorted(self.peak_pss, key=self.peak_pss.get, reverse=True)[:10]
        out["largest_processes_pss"] = [{"cmd": self.names.get(p, "?"), "peak_pss_mb": self.peak_pss[p] * mb,
                                         "peak_rss_mb": self.peak.get(p, 0) / 2**20} for p in top]
        return out


def _child_entry(fn: Callable[..., dict[str, Any]], args: tuple, result_file: str, log_file: str) -> None:
    """Entry point of a spawned measurement process: output to a log file, ``fn``'s result (or the
    error) as JSON."""
    with open(log_file, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            result = {"ok": True, **fn(*args)}
        except Exception as exc:  # reported by the parent with the log's tail
            traceback.print_exc()
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.flush()
        sys.stderr.flush()
    Path(result_file).write_text(json.dumps(result))


def run_monitored(fn: Callable[..., dict[str, Any]], args: tuple, result_file: Path, log_file: Path, what: str,
                  monitor: type[PssTreeMonitor] | None = PssTreeMonitor) -> tuple[dict[str, Any], PssTreeMonitor | None, float]:
    """``fn(*args)`` in a fresh spawned process (a module-level function: it is pickled by name) while
    ``monitor`` (None: nothing) samples the process tree; its result dict, the monitor and the wall
    seconds. A failure raises with the error and the last lines of the child's log."""
    proc = mp.get_context("spawn").Process(target=_child_entry, args=(fn, args, str(result_file), str(log_file)))
    started = time.perf_counter()
    proc.start()
    sampled = None
    if monitor is None:
        proc.join()
    else:
        with monitor(proc.pid) as sampled:
            proc.join()
    wall = time.perf_counter() - started
    if not result_file.is_file() or not (result := json.loads(result_file.read_text()))["ok"]:
        tail = log_file.read_text()[-3000:] if log_file.is_file() else ""
        error = result["error"] if result_file.is_file() else f"process exited with code {proc.exitcode}"
        raise RuntimeError(f"{what} failed: {error}\n--- last lines of {log_file} ---\n{tail}")
    return result, sampled, wall


def pipeline_config(preset: str | Path, root: Path, overrides: Sequence[str] = ()) -> Any:
    """A preset's config with tracking (SQLite) and Ray storage inside ``root``, then ``overrides``."""
    from vaeflow import config as cfg

    root = Path(root).resolve()
    return cfg.load(preset, overrides=[f"tracking.uri=sqlite:///{root}/mlflow.db",
                                       f"tracking.artifact_location={root}/mlartifacts",
                                       f"train.storage_path={root}/ray_results", *overrides])


def run_stages(config: Any, root: Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Run vaeflow's real stages (``prepare``, ``classifier``, ``train``, ``sample``, ``evaluate``) in
    order on the project folder ``root``, as ``vaeflow <stage>`` would; returns each stage's metrics
    and the wall seconds it took (``<stage>_wall_s``)."""
    from vaeflow import stages

    paths = stages.Paths.for_modality(config.modality, root)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        started = time.perf_counter()
        out[name] = getattr(stages, name)(config, paths, progress=False) or {}
        out[name][f"{name}_wall_s"] = time.perf_counter() - started
    return out

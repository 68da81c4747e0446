"""Where the jobs of a sweep run: one after the other in this process (`local`), in parallel worker processes on
this machine (`processes`), or as Ray tasks on a cluster (`ray`, the optional extra `pip install 'vibbench[ray]'`).
`auto`, the command line's default, picks `processes` for a run of several jobs on a CPU with several cores, else
`local` (see `make_executor`).

A unit of work is `jobs.run_unit`: one training group (one model, or one population) and the
evaluation of its members. Units share nothing but the cache folder, where every job has its own
folder named by its config hash, locked while a process works on it and written atomically; so
a unit can run in any process on any machine that sees the same cache folder, a killed unit
resumes from its last checkpoint, and the driver builds metrics.csv from the returned records
exactly as for a local run. This module imports Ray only when the Ray executor is asked for.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Protocol

import torch

from vibbench.core.errors import VibbenchError, check_positive_int, unknown_name_message
from vibbench.core.progress import disable_bars, elapsed_and_eta, log
from vibbench.models.plugins import load_plugins, registered_outside
from vibbench.models.registry import check_model
from vibbench.runs.cache import job_dir
from vibbench.runs.config import RunConfig
from vibbench.runs.jobs import Job, deterministic, job_data, run_unit

EXECUTORS = ("auto", "local", "processes", "ray")
DEFAULT_MAX_RETRIES = 2
MAX_RETRIES = 10  # retries are bounded: a job that fails this often has a problem a retry will not fix

# Which errors Ray retries. A crashed worker or a lost node is always retried (up to max_retries):
# the job resumes from its checkpoints in the cache. Of the errors a job raises itself, only
# transient ones are: OSError (a shared filesystem or network that hiccups; the retry may also land
# on another node) and CUDA running out of memory (fractional GPUs are shared with other jobs, whose
# memory comes and goes). A VibbenchError (bad config or data, a corrupt
# cache entry, diverged training) or any other exception gives the same result on every try, so
# it is reported at once instead of wasting the cluster's time.
RETRIED_EXCEPTIONS = (OSError, torch.cuda.OutOfMemoryError)


class Executor(Protocol):
    """Runs the units of a sweep (each a `run_unit`: one training group and the evaluation of its members)."""

    def run_units(self, cfg: RunConfig, units: list[list[Job]], cache_dir: Path, data_dir: Path | None, trainer: str, dataset) -> dict:
        """Run every unit; returns (result record, evaluation records) per job. `dataset` is the run's, already loaded."""
        ...

    def describe(self) -> dict:
        """What ran the jobs, for provenance.json."""
        ...


def _labels(members: list[Job]) -> str:
    return ", ".join(f"{spec.label} seed {seed}" for spec, seed in members)


def _raise_failed(failed: dict[int, str], units: list[list[Job]], cache_dir: Path, where: str = "") -> None:
    """Once every unit has finished: a VibbenchError naming each failed unit (`failed`: unit index -> its error)."""
    if failed:
        lines = "; ".join(f"{_labels(units[key])}: {text}" for key, text in sorted(failed.items()))
        raise VibbenchError(
            f"{len(failed)} of {len(units)} job(s) failed{where}: {lines}. The finished jobs are kept in {cache_dir}; "
            "rerun the same command to resume (only the failed jobs run again)"
        )


class LocalExecutor:
    """The units one after the other in this process, on data loaded once (needs no Ray)."""

    def run_units(self, cfg: RunConfig, units: list[list[Job]], cache_dir: Path, data_dir: Path | None, trainer: str, dataset) -> dict:
        """Run every unit; returns (result record, evaluation records) per job."""
        if not units:
            return {}
        data = job_data(cfg, data_dir, dataset)  # before any training, so a missing OOD set fails early
        results = {}
        started = time.perf_counter()
        for k, members in enumerate(units, 1):
            spent = f" ({elapsed_and_eta(time.perf_counter() - started, k - 1, len(units))})" if k > 1 else ""
            log(f"[{k}/{len(units)}] {_labels(members)}{spent}")
            results |= dict(zip(members, run_unit(cfg, members, cache_dir, data_dir, trainer, data)))
        return results

    def describe(self) -> dict:
        return {"name": "local"}


class ProcessExecutor:
    """The units in `workers` worker processes of this machine (spawned, so nothing of this process's state leaks in),
    each running torch on the CPUs this process may use, shared out among them (at least 1 thread each).

    On a CPU several independent units each on one core finish sooner than the same units one after the other on all
    cores: much of a unit's work (attacks on a few hundred images, small products) does not keep several threads busy.
    Each worker loads the data once and runs units in turn, the likely longest first (stochastic models, whose
    evaluation attacks two paths); a unit that fails is reported and the others finish (as on Ray). A worker's
    kernels are those of a local run with the same number of threads, so a unit gives the same numbers as a local run
    with `threads` torch threads, to the last bit."""

    def __init__(self, workers: int | None = None):
        check_positive_int("--workers", workers, allow_none=True)
        cpus = available_cpus()
        self.workers = workers or max(1, min(cpus, DEFAULT_MAX_WORKERS))
        self.threads = max(1, cpus // self.workers)

    def describe(self) -> dict:
        return {"name": "processes", "workers": self.workers, "torch_threads_per_job": self.threads}

    def run_units(self, cfg: RunConfig, units: list[list[Job]], cache_dir: Path, data_dir: Path | None, trainer: str, dataset) -> dict:
        """Run every unit in the workers; returns (result record, evaluation records) per job. A unit that raises
        is reported as it fails; once the others finish, a VibbenchError names every failed one."""
        if not units:
            return {}
        _check_plugins_recorded(cfg)
        job_data(cfg, data_dir, dataset)  # a missing OOD set fails here, before any worker starts
        order = sorted(range(len(units)), key=lambda k: -_expected_cost(units[k]))
        workers = min(self.workers, len(units))
        log(f"processes: {len(units)} job(s) on {workers} worker process(es), {self.threads} torch thread(s) each")
        results: dict = {}
        failed: dict[int, str] = {}
        started = time.perf_counter()
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker, initargs=(self.threads, os.getpid()))
        try:
            futures = {pool.submit(_worker_unit, cfg, units[k], cache_dir, data_dir, trainer): k for k in order}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    key = futures[future]
                    try:
                        results |= dict(zip(units[key], future.result()))
                    except BrokenProcessPool:
                        failed[key] = "its worker process died (killed, or out of memory)"
                    except Exception as exc:  # noqa: BLE001 -- reported with the others once every unit has finished
                        failed[key] = f"{type(exc).__name__}: {exc}"
                    if key in failed:
                        log(f"processes: {_labels(units[key])} failed: {failed[key]}")
                finished = len(futures) - len(pending)
                log(f"processes: {finished - len(failed)}/{len(units)} jobs done, {len(failed)} failed ({elapsed_and_eta(time.perf_counter() - started, finished, len(units))})")
        except BaseException:  # Ctrl-C or an error here: no unit is started any more, the running ones stop now
            for process in list((pool._processes or {}).values()):  # no public way before Python 3.14's terminate_workers
                process.terminate()  # its unit resumes from its last checkpoint in the cache on the next run
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        _raise_failed(failed, units, cache_dir)
        return results


DEFAULT_MAX_WORKERS = 8
"""Workers of `processes` when --workers is not given: one per CPU, at most this many (each holds the data)."""


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity; a container's or a scheduler's limit), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _expected_cost(members: list[Job]) -> int:
    """A unit's relative length, to start the longest first: a stochastic model's evaluation attacks two paths."""
    return sum(2 if check_model(spec.name)[1].stochastic else 1 for spec, _ in members)


def init_worker(threads: int, parent: int) -> None:
    """A worker process of `ProcessExecutor` (and of the bench's sweep comparison): it dies with the process that
    started it (`parent`), runs torch on `threads` threads with deterministic kernels as a local run does, and draws
    no live bars."""
    _die_with(parent)
    torch.set_num_threads(threads)
    deterministic()
    disable_bars()


def _die_with(parent: int) -> None:
    """SIGKILL this process when `parent` ends, even by SIGKILL (Linux's parent-death signal): a killed run leaves no
    worker computing on, holding its job's lock. Elsewhere a worker finds out when it next talks to the run."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the signal was set
        os._exit(1)


_WORKER_DATA: dict = {}
"""A worker's data, loaded by its first unit of a run (keyed by the run's config hash and data folder)."""


def _worker_unit(cfg: RunConfig, members: list[Job], cache_dir: Path, data_dir: Path | None, trainer: str):
    load_plugins(cfg.plugins)  # before the config's models are used (its hash resolves them), as run_unit does
    key = (cfg.config_hash, data_dir)
    if key not in _WORKER_DATA:
        _WORKER_DATA.clear()
        _WORKER_DATA[key] = job_data(cfg, data_dir)
    return run_unit(cfg, members, cache_dir, data_dir, trainer, _WORKER_DATA[key])


class RayExecutor:
    """Each unit is a Ray task declaring `cpus_per_job` CPUs (its torch threads) and, on CUDA, a
    fraction of a GPU. Workers load the data themselves and write to the cache folder, which must
    be a path every node reaches (a shared filesystem)."""

    def __init__(self, device: str, address: str | None = None, cpus_per_job: int | None = None, gpus_per_job: float | None = None, max_retries: int | None = None):
        if address is not None and not address.strip():
            raise VibbenchError("--ray-address must not be empty: give HOST:PORT, auto, or leave it out")
        check_positive_int("--ray-cpus-per-job", cpus_per_job, allow_none=True)
        if gpus_per_job is not None and device != "cuda":
            raise VibbenchError("--ray-gpus-per-job only applies with --device cuda")
        if gpus_per_job is not None and not 0 < gpus_per_job <= 1:
            raise VibbenchError(f"--ray-gpus-per-job must be in (0, 1] (a fraction of one GPU), got {gpus_per_job!r}")
        if max_retries is not None and (not isinstance(max_retries, int) or not 0 <= max_retries <= MAX_RETRIES):
            raise VibbenchError(f"--ray-max-retries must be an integer from 0 to {MAX_RETRIES}, got {max_retries!r}")
        self.ray = import_ray()
        check_ray_address(address)
        self.address = address
        self.cpus_per_job = cpus_per_job or 1
        self.gpus_per_job = (gpus_per_job or 1.0) if device == "cuda" else 0.0
        self.max_retries = DEFAULT_MAX_RETRIES if max_retries is None else max_retries
        self.connected_to: str | None = None

    def describe(self) -> dict:
        return {
            "name": "ray",
            "address": self.connected_to,
            "ray_version": self.ray.__version__,
            "cpus_per_job": self.cpus_per_job,
            "torch_threads_per_job": self.cpus_per_job,
            "gpus_per_job": self.gpus_per_job,
            "max_retries": self.max_retries,
        }

    def run_units(self, cfg: RunConfig, units: list[list[Job]], cache_dir: Path, data_dir: Path | None, trainer: str, dataset) -> dict:
        """Submit every unit as a task and gather the results; a unit that still fails after its retries
        is reported, the others finish, then a VibbenchError names the failed ones."""
        if not units:
            return {}
        _check_plugins_recorded(cfg)
        ray = self.ray
        with self._connection():
            self._check_feasible()
            task = ray.remote(
                num_cpus=self.cpus_per_job,
                num_gpus=self.gpus_per_job,
                max_retries=self.max_retries,
                retry_exceptions=list(RETRIED_EXCEPTIONS),
            )(_ray_unit)
            starts = ray.remote(num_cpus=0)(_Starts).remote()
            refs = {
                task.remote(cfg, members, cache_dir, data_dir, trainer, self.cpus_per_job, key, starts): key
                for key, members in enumerate(units)
            }
            gpus = f" and {self.gpus_per_job:g} GPU" if self.gpus_per_job else ""
            log(f"ray: {len(units)} job(s) submitted to {self.connected_to}, {self.cpus_per_job} CPU(s){gpus} each")
            return self._gather(refs, units, starts, cache_dir)

    @contextlib.contextmanager
    def _connection(self):
        ray = self.ray
        if ray.is_initialized():  # this process already drives Ray (the Python API): use its connection
            self.connected_to = ray.get_runtime_context().gcs_address
            yield
            return
        where = self.address or "a new local Ray instance ($RAY_ADDRESS if set)"
        try:
            ray.init(address=self.address)
        except (ConnectionError, ValueError) as exc:
            raise VibbenchError(
                f"cannot connect to Ray at {where}: {exc}. Start a cluster with `ray start --head`, or leave out --ray-address"
            ) from None
        try:
            self.connected_to = ray.get_runtime_context().gcs_address
            yield
        finally:
            ray.shutdown()

    def _check_feasible(self) -> None:
        """Ray waits forever for a task no node can hold: fail now instead."""
        nodes = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]
        if not any(r.get("CPU", 0) >= self.cpus_per_job and r.get("GPU", 0) >= self.gpus_per_job for r in nodes):
            have = ", ".join(f"{r.get('CPU', 0):g} CPU/{r.get('GPU', 0):g} GPU" for r in nodes) or "no live node"
            raise VibbenchError(
                f"no node of the Ray cluster at {self.connected_to} can run a job with {self.cpus_per_job} CPU(s) and "
                f"{self.gpus_per_job:g} GPU (nodes: {have}); lower --ray-cpus-per-job or --ray-gpus-per-job, or add nodes"
            )

    def _gather(self, refs: dict, units: list[list[Job]], starts, cache_dir: Path) -> dict:
        """Wait for the tasks `refs` (task -> index of its unit), printing progress on every change."""
        ray = self.ray
        results: dict = {}
        failed: dict[int, str] = {}
        pending = list(refs)
        attempts: dict[int, int] = {}
        shown = None
        started = time.perf_counter()
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in ready:
                key = refs[ref]
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the unit raised, or its worker died once too often
                    failed[key] = _error_text(exc)
                    log(f"ray: {_labels(units[key])} failed: {failed[key]}")
                    continue
                if not all((job_dir(cache_dir, record["job_hash"]) / "result.json").exists() for record, _ in out):
                    failed[key] = f"its results are not in {cache_dir} on this machine: --cache-dir must be a folder every node shares"
                    log(f"ray: {_labels(units[key])} failed: {failed[key]}")
                    continue
                results |= dict(zip(units[key], out))
            for key, n in ray.get(starts.snapshot.remote()).items():
                if n > attempts.get(key, 1):
                    log(f"ray: {_labels(units[key])} restarted (attempt {n} of {self.max_retries + 1}), resuming from the cache")
                attempts[key] = n
            finished = set(refs.values()) - {refs[ref] for ref in pending}
            # running: started and not returned (a unit whose worker died counts until its retry starts)
            state = (len(finished) - len(failed), len(set(attempts) - finished), len(failed))
            if state != shown:
                spent = elapsed_and_eta(time.perf_counter() - started, state[0] + state[2], len(units))
                log(f"ray: {state[0]}/{len(units)} jobs done, {state[1]} running, {state[2]} failed ({spent})")
                shown = state
        _raise_failed(failed, units, cache_dir, " on Ray")
        return results


def _check_plugins_recorded(cfg: RunConfig) -> None:
    """Workers import the run's recorded plugins (`cfg.plugins`) before its models resolve; a model registered in
    this process by a module the run does not record (imported in Python, not loaded with --plugin) would be
    unknown there, so it is refused here, before any task starts."""
    if cfg.plugins:
        return
    foreign = []
    for spec in cfg.models:
        backbone, method, _ = check_model(spec.name)
        if registered_outside(backbone, method.name):
            foreign.append(spec.label)
    if foreign:
        raise VibbenchError(
            f"{', '.join(foreign)} come(s) from a backbone or method registered in this process, which Ray workers do not "
            "know: load the module that registers it with --plugin MODULE (in Python: make_run_config(..., plugins=[MODULE]))"
        )


class _Starts:
    """A Ray actor counting how often each unit started: started and not finished is running; a second start is a retry."""

    def __init__(self):
        self.counts: dict[int, int] = {}

    def started(self, key: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def snapshot(self) -> dict[int, int]:
        return dict(self.counts)


def _ray_unit(cfg, members, cache_dir, data_dir, trainer, threads, key, starts):
    """`run_unit` as a Ray task: torch uses the CPUs the task declared (the results of CPU kernels depend on
    the thread count, see README), deterministic algorithms as in a local run."""
    import ray

    ray.get(starts.started.remote(key))
    torch.set_num_threads(threads)
    deterministic()
    return run_unit(cfg, members, cache_dir, data_dir, trainer)


def _error_text(exc: Exception) -> str:
    """The error a unit raised (not Ray's wrapping and remote traceback), or Ray's first line for a dead worker."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


RAY_CONNECT_TIMEOUT = 5.0
"""Seconds `check_ray_address` waits for the cluster to accept a connection."""


def check_ray_address(address: str | None) -> None:
    """Fail at start, in one line, when the cluster that `address` (else $RAY_ADDRESS) names cannot be parsed or
    reached: a run whose jobs are all cached never connects, and would not notice. No address (and no $RAY_ADDRESS)
    or `local` starts a local instance: nothing to check. `auto` is resolved as ray.init resolves it."""
    import os
    import socket

    given, where = (address, "--ray-address") if address is not None else (os.environ.get("RAY_ADDRESS") or None, "$RAY_ADDRESS")
    if given is None or given == "local":
        return
    target = given.removeprefix("ray://")
    if target == "auto":
        try:  # Ray's own rule: the cluster `ray start` recorded on this machine, else a running one
            from ray._private.services import canonicalize_bootstrap_address
        except ImportError:
            return
        try:
            target = canonicalize_bootstrap_address("auto")
        except (ConnectionError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise VibbenchError(f"{where} auto finds no Ray cluster on this machine ({first}); start one with `ray start --head`, or give HOST:PORT") from None
        if target is None:
            return
    host, colon, port = target.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise VibbenchError(f"{where} {given!r} is not a Ray address: give HOST:PORT (e.g. 10.0.0.1:6379), ray://HOST:PORT, auto or local")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_TIMEOUT).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise VibbenchError(
            f"cannot reach the Ray cluster at {given} ({where}): {reason}. Start it (`ray start --head`), fix the address, "
            "or leave it out to start a local Ray instance"
        ) from None


def import_ray():
    """The ray module, or a VibbenchError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise VibbenchError("--executor ray needs Ray, which is not installed: pip install 'vibbench[ray]'") from None
    return ray


def make_executor(
    name: str = "local", *, device: str = "cpu", address: str | None = None, cpus_per_job: int | None = None,
    gpus_per_job: float | None = None, max_retries: int | None = None, workers: int | None = None, jobs: int = 1,
) -> Executor:
    """The executor named on the command line; Ray options (None: not given) only go with `ray`, --workers only with
    `processes` or `auto`. `jobs`: the run's (model, seed) jobs, cached or not, for `auto`, which picks `processes` on a
    CPU with several cores (or --workers above 1) for a run of several jobs, else `local`: on CUDA one process keeps
    the GPU busy, and one job gains nothing from a worker. The choice depends on the command, not on what the cache
    holds, so an interrupted run resumes with the torch threads it started with (and gives the same numbers)."""
    if name not in EXECUTORS:
        raise VibbenchError(unknown_name_message("executor", name, EXECUTORS))
    if name != "ray":
        options = {"--ray-address": address, "--ray-cpus-per-job": cpus_per_job, "--ray-gpus-per-job": gpus_per_job, "--ray-max-retries": max_retries}
        given = [option for option, value in options.items() if value is not None]
        if given:
            raise VibbenchError(f"{given[0]} only applies with --executor ray")
    if workers is not None and name not in ("auto", "processes"):
        raise VibbenchError("--workers only applies with --executor processes or auto")
    if name == "local":
        return LocalExecutor()
    if name == "processes":
        if device != "cpu":
            raise VibbenchError("--executor processes runs on the CPU: use --executor local with --device cuda")
        return ProcessExecutor(workers)
    if name == "auto":
        check_positive_int("--workers", workers, allow_none=True)
        several = device == "cpu" and jobs > 1 and (workers or available_cpus()) > 1
        return ProcessExecutor(workers) if several else LocalExecutor()
    return RayExecutor(device, address, cpus_per_job, gpus_per_job, max_retries)

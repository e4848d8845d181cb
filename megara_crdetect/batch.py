"""Many observing blocks at once: ``numina-crmasks batch`` on Dask distributed.

One task per observing block (OB).  Each task runs the same
:func:`megara_crdetect.runner.run` as the single-run command and writes
``OUT/<OB name>/`` with its all-or-nothing staging.  The tasks run on a Dask
``LocalCluster`` of single-threaded worker processes sized to the machine, or
on an existing cluster given by the address of its scheduler.

``OUT/batch_manifest.json`` records, for every OB, its inputs (paths, sizes,
modification times, SHA-256), its parameters (the validated configuration and
its hash) and its outcome (status, message, wall time, products).  Running the
same command again skips the OBs whose products are complete and whose inputs
and parameters did not change, and redoes the others.

OB names: a parameter file ``night1/ob07.yaml`` is the OB ``ob07``; a folder
``night1/ob07/`` (holding exactly one ``*.yaml``/``*.yml`` file) is also
``ob07``.  Two OBs with the same name are an error before anything runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import ConfigError, InputError

__all__ = ["ObservingBlock", "BatchResult", "check_names", "discover", "read_list", "run_batch", "process_ob",
           "estimate_memory", "main", "MANIFEST", "SUMMARY"]

_log = logging.getLogger(__name__)

MANIFEST = "batch_manifest.json"
SUMMARY = "batch_summary.csv"
LOGS = "batch_logs"
LOCK = "batch.lock"
RESERVED = {MANIFEST, SUMMARY, LOGS, LOCK}
#: Prefix of the hidden staging folders of :class:`megara_crdetect.io.OutputStage`.
STAGING_PREFIX = ".megara-crdetect-"
_YAML = (".yaml", ".yml")


# ---------------------------------------------------------------------------
# which OBs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ObservingBlock:
    """One OB of a batch: its name (the output folder) and its parameter file."""

    name: str
    params: Path


def _ob_of(source: Path) -> ObservingBlock:
    if source.is_dir():
        found = sorted(p for p in source.iterdir() if p.suffix.lower() in _YAML and p.is_file())
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise InputError(f"OB folder '{source}': {what} parameter files (*.yaml) found; exactly one is "
                             "needed (or give the parameter file itself)")
        return ObservingBlock(source.resolve().name, found[0].resolve())
    if not source.exists():
        raise InputError(f"'{source}': no such parameter file or OB folder")
    return ObservingBlock(source.stem, source.resolve())


def read_list(path: str | os.PathLike) -> list[Path]:
    """The entries of a list file: one parameter file or OB folder a line.

    Blank lines and text after ``#`` are ignored; relative paths are taken
    relative to the folder of the list file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--from '{path}': list file not found")
    entries = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entry = Path(line)
            entries.append(entry if entry.is_absolute() else path.parent / entry)
    return entries


def check_names(obs: Sequence[ObservingBlock]) -> list[ObservingBlock]:
    """The OBs without repeats; an error for reserved names and for two OBs of one name.

    Raises
    ------
    InputError
        A reserved name, or two different parameter files with the same OB
        name (both named), or no OB at all.
    """
    unique, seen = [], {}
    for ob in obs:
        if ob.name in RESERVED or ob.name.startswith("."):
            raise InputError(f"OB '{ob.params}': the name '{ob.name}' is reserved for the batch's own files; "
                             "rename the parameter file or its folder")
        if ob.name in seen:
            if seen[ob.name].params == ob.params:
                continue
            raise InputError(f"OB name '{ob.name}' given twice: '{seen[ob.name].params}' and '{ob.params}' "
                             f"would both write OUT/{ob.name}/; rename one (or give the OB folders)")
        seen[ob.name] = ob
        unique.append(ob)
    if not unique:
        raise InputError("no OB given: name parameter files, OB folders or --from LIST.txt")
    return unique


def discover(sources: Sequence[str | os.PathLike]) -> list[ObservingBlock]:
    """The OBs named by parameter files and OB folders, in the order given.

    Raises
    ------
    InputError
        A source that does not exist, a folder without exactly one parameter
        file, a reserved name, or two OBs with the same name (see
        :func:`check_names`).
    """
    return check_names([_ob_of(Path(source)) for source in sources])


# ---------------------------------------------------------------------------
# fingerprints and the manifest
# ---------------------------------------------------------------------------


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    """SHA-256 (hex) of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _config_record(cfg) -> tuple[dict, str]:
    """The validated configuration as JSON-able data and its hash."""
    data = dataclasses.asdict(cfg)
    text = json.dumps(data, sort_keys=True, default=str)
    return json.loads(text), hashlib.sha256(text.encode()).hexdigest()


def _input_paths(cfg, base_dir: Path) -> list[Path]:
    return [(base_dir / p).resolve() if not Path(p).is_absolute() else Path(p) for p in cfg.inputs.images]


def input_record(path: Path, *, checksum: bool = True) -> dict:
    """Path, size, modification time (ns) and SHA-256 of one input file."""
    st = path.stat()
    rec = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if checksum:
        rec["sha256"] = sha256_of(path)
    return rec


def _inputs_unchanged(recorded: list[dict], paths: list[Path]) -> bool:
    """True when every input is the one recorded (same stat, or else the same SHA-256)."""
    if [r.get("path") for r in recorded] != [str(p) for p in paths]:
        return False
    for rec, path in zip(recorded, paths):
        try:
            now = input_record(path, checksum=False)
        except OSError:
            return False
        if now["size"] != rec.get("size"):
            return False
        if now["mtime_ns"] != rec.get("mtime_ns"):
            if sha256_of(path) != rec.get("sha256"):
                return False
            rec["mtime_ns"] = now["mtime_ns"]  # touched, not changed: no checksum next time
    return True


def _products_complete(folder: Path, products: list[dict]) -> bool:
    if not products:
        return False
    for prod in products:
        path = folder / prod["name"]
        if not path.is_file() or path.stat().st_size != prod["size"]:
            return False
    return True


class Manifest:
    """``OUT/batch_manifest.json``: one record per OB, rewritten atomically."""

    def __init__(self, root: Path):
        self.path = root / MANIFEST
        self.data = {"format": 1, "tool": f"megara-crdetect {__version__}", "runs": [], "obs": {}}
        if self.path.exists():
            try:
                loaded = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                msg = f"'{self.path}' cannot be read ({exc}); move it away to start afresh"
                raise InputError(msg) from None
            if not isinstance(loaded, dict) or loaded.get("format") != 1:
                raise InputError(f"'{self.path}' is not a megara-crdetect batch manifest (format 1)")
            self.data.update(loaded)
        self._last_write = 0.0

    @property
    def obs(self) -> dict:
        return self.data["obs"]

    def write(self, *, throttle: float = 0.0) -> None:
        """Write the manifest (skipped when the last write is younger than ``throttle`` seconds)."""
        now = time.monotonic()
        if throttle and now - self._last_write < throttle:
            return
        tmp = self.path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
        self._last_write = now


# ---------------------------------------------------------------------------
# the task: one OB on a worker
# ---------------------------------------------------------------------------


def sweep_staging(folder: Path) -> int:
    """Remove the hidden staging folders left in ``folder`` by a killed run; returns how many."""
    count = 0
    if folder.is_dir():
        for item in folder.iterdir():
            if item.name.startswith(STAGING_PREFIX) and item.is_dir():
                shutil.rmtree(item, ignore_errors=True)
                count += 1
    return count


class _Capture(logging.Handler):
    """Keeps the log lines of one task (its own thread only)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.thread = threading.get_ident()
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))

    def emit(self, record):
        if record.thread == self.thread:
            self.lines.append(self.format(record))


@contextlib.contextmanager
def _captured_log():
    logger = logging.getLogger("megara_crdetect")
    handler, level = _Capture(), logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _load_config(params: Path):
    """Parameter file -> validated RunConfig with ``interactive`` off; second value: was it on."""
    from .cli import _load_yaml
    from .config import parse_run_config

    cfg = parse_run_config(_load_yaml(params))
    forced = cfg.params.interactive or cfg.params.verify_cr
    if forced:
        cfg = dataclasses.replace(cfg, params=cfg.params.replace(interactive=False, verify_cr=False))
    return cfg, forced


def _summary_of(result) -> dict:
    if result is None:
        return {}
    return {"mediancr": int(result.counts.get("mediancr", 0)),
            "flux_factors": [round(float(f), 6) for f in result.flux_factors],
            "offsets": [[round(float(v), 4) for v in o] for o in result.offsets]}


def _worker_name() -> str:
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return "local"


def process_ob(spec: dict) -> dict:
    """Run one OB (the Dask task); returns its record for the manifest.

    ``spec`` holds ``name``, ``params`` (path), ``output`` (folder),
    ``figures`` (bool), ``threads`` (None: one per core) and ``old_products``
    (names written by an earlier run, removed when not written again).  Bad
    input (YAML, parameter, missing or unreadable file) is returned as status
    ``failed`` with its one-line message; any other exception propagates so
    that Dask retries the task.
    """
    from .runner import run

    t0 = time.perf_counter()
    out = Path(spec["output"])
    record = {"status": "failed", "worker": _worker_name(), "pid": os.getpid(),
              "stale_staging_removed": sweep_staging(out)}
    with _captured_log() as lines:
        try:
            cfg, forced = _load_config(Path(spec["params"]))
            if forced:
                _log.info("batch mode: interactive (and verify_cr) forced off for OB %s", spec["name"])
            paths = _input_paths(cfg, Path(spec["params"]).parent)
            record["inputs"] = [input_record(p) for p in paths if p.exists()]
            figures = None
            if spec.get("figures", True):
                from .review.figures import write_figures as figures
            outcome = run(cfg, base_dir=Path(spec["params"]).parent, output_dir=out, figures=figures,
                          workers=spec.get("threads"))
        except (ConfigError, InputError) as exc:
            record.update(message=f"error: {exc}", wall_s=round(time.perf_counter() - t0, 3), log=lines)
            return record
        written = {p.name for p in outcome.files}
        for name in spec.get("old_products") or ():
            if name not in written and (out / name).is_file():
                (out / name).unlink()
        record.update(status="done", message="", wall_s=round(time.perf_counter() - t0, 3), log=lines,
                      products=[{"name": p.name, "size": p.stat().st_size} for p in sorted(outcome.files)],
                      summary=_summary_of(outcome.result))
    return record


# ---------------------------------------------------------------------------
# planning: what to run, what is up to date
# ---------------------------------------------------------------------------


@dataclass
class _Plan:
    ob: ObservingBlock
    config: dict | None = None
    config_sha256: str = ""
    inputs: list[Path] = field(default_factory=list)
    error: str = ""
    forced_interactive: bool = False
    up_to_date: bool = False


def _plan(ob: ObservingBlock, manifest: Manifest, options: dict, out: Path, force: bool) -> _Plan:
    plan = _Plan(ob)
    try:
        cfg, plan.forced_interactive = _load_config(ob.params)
    except (ConfigError, InputError) as exc:
        plan.error = f"error: {exc}"
        return plan
    plan.config, plan.config_sha256 = _config_record(cfg)
    plan.inputs = _input_paths(cfg, ob.params.parent)
    old = manifest.obs.get(ob.name)
    plan.up_to_date = bool(
        not force and old and old.get("status") == "done" and old.get("params") == str(ob.params)
        and old.get("config_sha256") == plan.config_sha256 and old.get("options") == options
        and _inputs_unchanged(old.get("inputs", []), plan.inputs)
        and _products_complete(out / ob.name, old.get("products", [])))
    return plan


#: Peak memory of one OB: a fixed part plus a multiple of the stack's bytes
#: (measured: 1596 x 2016 x 3 about 0.55 GB, 4112 x 4096 x 3 about 2.1 GB).
MEMORY_BASE = 0.4e9
MEMORY_PER_STACK_BYTE = 12.0


def estimate_memory(shape: tuple[int, int], n_images: int) -> float:
    """Estimated peak memory (bytes) of one OB with ``n_images`` frames of ``shape`` (ny, nx)."""
    return MEMORY_BASE + MEMORY_PER_STACK_BYTE * 4.0 * n_images * shape[0] * shape[1]


def _largest_stack(plans: list[_Plan]) -> tuple[tuple[int, int], int]:
    from astropy.io import fits

    best, best_size = ((0, 0), 0), -1
    for plan in plans:
        if plan.error or not plan.inputs or not plan.inputs[0].exists():
            continue
        try:
            extnum = int(plan.config["inputs"]["extnum"])
            hdr = fits.getheader(plan.inputs[0], extnum)
            shape = (int(hdr.get("NAXIS2", 0)), int(hdr.get("NAXIS1", 0)))
        except (OSError, ValueError, IndexError, KeyError):
            continue
        size = shape[0] * shape[1] * len(plan.inputs)
        if size > best_size:
            best, best_size = (shape, len(plan.inputs)), size
    return best


# ---------------------------------------------------------------------------
# the cluster
# ---------------------------------------------------------------------------


@dataclass
class _Cluster:
    client: object
    cluster: object | None
    description: str
    dashboard: str | None
    threads_per_ob: int | None
    slots: int


def _dashboard_of(client, local: bool) -> str | None:
    try:
        info = client.scheduler_info()
    except Exception:  # noqa: BLE001 - diagnostics only
        return None
    if "dashboard" not in info.get("services", {}):
        return None
    if local and not _has_bokeh():
        return f"{client.dashboard_link} (plots need bokeh: pip install megara-crdetect[dashboard])"
    return client.dashboard_link


def _local_cluster(n_todo: int, stack: tuple, *, workers: int | None, threads_per_worker: int,
                   memory_limit: float | None, retries: int):
    import dask
    import psutil
    from distributed import LocalCluster

    cores = os.cpu_count() or 1
    need = estimate_memory(*stack) if stack[1] else MEMORY_BASE
    limit = memory_limit or 1.5 * need
    available = psutil.virtual_memory().available
    fit = max(1, int(available // limit))
    n = workers or max(1, min(max(1, cores // threads_per_worker), fit, max(n_todo, 1)))
    # No MALLOC_TRIM_THRESHOLD_ for the workers: setting it turns off glibc's adaptive mmap threshold, so
    # every large numpy temporary is mmap'ed and faulted in again (measured on 1596 x 2016 x 3 OBs:
    # a third of the worker CPU time in the kernel, 5.8 million page faults per worker in 15 min).
    with dask.config.set({"distributed.scheduler.allowed-failures": retries,
                          "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                          # one long CPU-bound task per worker: the 10 ms stack sampler only costs CPU
                          "distributed.worker.profile.enabled": False}):
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                               memory_limit=int(limit), host="127.0.0.1", dashboard_address="127.0.0.1:0")
    text = (f"local Dask cluster: {n} worker process(es) x {threads_per_worker} thread(s), memory limit "
            f"{limit / 1e9:.2f} GB each (largest OB {stack[0][1]} x {stack[0][0]} x {stack[1]}, "
            f"estimated peak {need / 1e9:.2f} GB)")
    return cluster, text


def _has_bokeh() -> bool:
    import importlib.util
    return importlib.util.find_spec("bokeh") is not None


def _workers_of(client) -> dict:
    try:
        return client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # distributed before 2025: every worker is listed
        return client.scheduler_info()["workers"]


def _threads_per_ob(client) -> int | None:
    """None (the runner's one thread per core) when each host has one single-threaded worker, else 1."""
    hosts: dict[str, list[int]] = {}
    for info in _workers_of(client).values():
        hosts.setdefault(info.get("host", ""), []).append(int(info.get("nthreads", 1)))
    alone = hosts and all(len(t) == 1 and t[0] == 1 for t in hosts.values())
    return None if alone else 1


def _connect(scheduler: str | None, n_todo: int, stack, *, workers, threads_per_worker, memory_limit,
             retries) -> _Cluster:
    from distributed import Client

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise InputError(f"--scheduler '{scheduler}': cannot connect ({exc})") from None
        cluster, text = None, f"Dask cluster at {scheduler}"
    else:
        cluster, text = _local_cluster(n_todo, stack, workers=workers, threads_per_worker=threads_per_worker,
                                       memory_limit=memory_limit, retries=retries)
        client = Client(cluster)
    workers_info = _workers_of(client)
    if scheduler:
        text += f" ({len(workers_info)} worker(s))"
    slots = sum(int(w.get("nthreads", 1)) for w in workers_info.values())
    return _Cluster(client, cluster, text, _dashboard_of(client, not scheduler), _threads_per_ob(client), slots)


# ---------------------------------------------------------------------------
# the batch
# ---------------------------------------------------------------------------


@dataclass
class BatchResult:
    """Outcome of a batch: one row per OB (``name``, ``status``, ``message``...) and counts."""

    rows: list[dict]
    output_root: Path
    interrupted: bool = False

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "failed"]

    @property
    def ok(self) -> bool:
        return not self.interrupted and not self.failed


def _row(name: str, rec: dict, status: str) -> dict:
    summary = rec.get("summary") or {}
    return {"name": name, "status": status, "message": rec.get("message", ""), "wall_s": rec.get("wall_s"),
            "mediancr": summary.get("mediancr"), "flux_factors": summary.get("flux_factors"),
            "offsets": summary.get("offsets"), "products": [p["name"] for p in rec.get("products", [])],
            "worker": rec.get("worker", ""), "attempts": rec.get("attempts", 0)}


@contextlib.contextmanager
def _exclusive(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK).open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(f"--output-root '{root}': another batch is writing into it") from None
        yield


def _write_log(root: Path, name: str, lines: list[str]) -> None:
    if lines:
        folder = root / LOGS
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.log").write_text("\n".join(lines) + "\n")


def run_batch(obs: Sequence[ObservingBlock | str | os.PathLike], output_root: str | os.PathLike, *,
              scheduler: str | None = None, workers: int | None = None, threads_per_worker: int = 1,
              retries: int = 2, memory_limit: float | None = None, figures: bool = True,
              force: bool = False, reporter=None) -> BatchResult:
    """Run many OBs, one Dask task each, into ``output_root/<OB name>/``.

    Parameters
    ----------
    obs : sequence of ObservingBlock or path-like
        OBs, parameter files or OB folders (see :func:`discover`).
    output_root : path-like
        Root of the products; holds ``batch_manifest.json``,
        ``batch_summary.csv`` and ``batch_logs/``.
    scheduler : str, optional
        Address of an existing Dask scheduler (``tcp://host:8786``); default
        a ``LocalCluster`` of processes.
    workers : int, optional
        Local worker processes (default: one per core, fewer if the memory an
        OB needs does not fit, never more than OBs to run).
    threads_per_worker : int
        Threads of each local worker (OBs run at once per worker).
    retries : int
        How many times an OB whose task raised or whose worker died is tried
        again (local cluster; an external scheduler uses its own
        ``distributed.scheduler.allowed-failures`` for dead workers).
    memory_limit : float, optional
        Bytes per local worker (default 1.5 x the estimated peak of the
        largest OB, :func:`estimate_memory`).
    figures : bool
        Write the diagnostic figures (as the single-run command does).
    force : bool
        Run every OB even if up to date.
    reporter : object, optional
        Progress display with ``start(total, done, text)``, ``update(row,
        running)``, ``tick(running)`` and ``close()`` (see
        :mod:`megara_crdetect.batchreport`); default log lines.

    Returns
    -------
    BatchResult
        Also written as ``batch_summary.csv``.

    Raises
    ------
    InputError
        Before anything runs: missing sources, duplicate OB names, an output
        root in use by another batch, an unreachable scheduler.
    """
    from .batchreport import LogReporter, write_summary_csv

    reporter = reporter or LogReporter()
    obs = check_names([o if isinstance(o, ObservingBlock) else _ob_of(Path(o)) for o in obs])
    root = Path(output_root)
    with _exclusive(root):
        manifest = Manifest(root)
        options = {"figures": bool(figures)}
        plans = [_plan(ob, manifest, options, root, force) for ob in obs]
        result = _execute(plans, root, manifest, options, reporter=reporter, scheduler=scheduler,
                          workers=workers, threads_per_worker=threads_per_worker, retries=retries,
                          memory_limit=memory_limit)
        write_summary_csv(root / SUMMARY, result.rows)
    return result


def _execute(plans, root, manifest, options, *, reporter, scheduler, workers, threads_per_worker, retries,
             memory_limit) -> BatchResult:
    run_id = time.strftime("%Y-%m-%dT%H:%M:%S") + "-" + uuid.uuid4().hex[:6]
    manifest.data["runs"].append({"id": run_id, "tool": f"megara-crdetect {__version__}"})
    rows: dict[str, dict] = {}
    todo = []
    for plan in plans:
        name = plan.ob.name
        if plan.error:
            rec = {"status": "failed", "message": plan.error, "params": str(plan.ob.params), "run": run_id}
            manifest.obs[name] = rec
            rows[name] = _row(name, rec, "failed")
        elif plan.up_to_date:
            rows[name] = _row(name, manifest.obs[name], "skipped")
        else:
            todo.append(plan)
            if plan.forced_interactive:
                _log.info("batch mode: interactive forced off for OB %s (its YAML asks for it)", name)
    manifest.write()
    n_skip = sum(r["status"] == "skipped" for r in rows.values())
    _log.info("batch: %d OB(s): %d to run, %d up to date (skipped), %d invalid; interactive is off in "
              "batch mode", len(plans), len(todo), n_skip, len(plans) - len(todo) - n_skip)
    for row in rows.values() if not todo else ():  # else the reporter shows them
        if row["status"] == "failed":
            _log.warning("OB %s failed: %s", row["name"], row["message"])
    interrupted = False
    if todo:
        interrupted = _run_todo(todo, root, manifest, options, rows, run_id, reporter=reporter,
                                scheduler=scheduler, workers=workers, threads_per_worker=threads_per_worker,
                                retries=retries, memory_limit=memory_limit, already=len(rows))
    ordered = [rows[p.ob.name] for p in plans if p.ob.name in rows]
    ordered += [_row(p.ob.name, {"message": "not run (interrupted)"}, "not run")
                for p in plans if p.ob.name not in rows]
    return BatchResult(ordered, root, interrupted)


def _spec(plan: _Plan, root: Path, options: dict, manifest: Manifest, threads) -> dict:
    old = manifest.obs.get(plan.ob.name, {})
    return {"name": plan.ob.name, "params": str(plan.ob.params), "output": str(root / plan.ob.name),
            "figures": options["figures"], "threads": threads,
            "old_products": [p["name"] for p in old.get("products", [])]}


def _record_done(plan: _Plan, rec: dict, options: dict, run_id: str) -> dict:
    rec.update(params=str(plan.ob.params), config=plan.config, config_sha256=plan.config_sha256,
               options=options, run=run_id, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return rec


def _run_todo(todo, root, manifest, options, rows, run_id, *, reporter, scheduler, workers,
              threads_per_worker, retries, memory_limit, already) -> bool:
    stack = _largest_stack(todo)
    conn = _connect(scheduler, len(todo), stack, workers=workers, threads_per_worker=threads_per_worker,
                    memory_limit=memory_limit, retries=retries)
    by_key, futures, interrupted = {}, [], False
    try:
        _log.info("%s; threads per OB: %s", conn.description,
                  "one per core" if conn.threads_per_ob is None else conn.threads_per_ob)
        _log.info("Dask dashboard: %s", conn.dashboard or "none")
        for plan in todo:
            key = f"ob-{plan.ob.name}-{run_id}"
            fut = conn.client.submit(process_ob, _spec(plan, root, options, manifest, conn.threads_per_ob),
                                     key=key, retries=retries, pure=False)
            by_key[fut.key] = plan
            futures.append(fut)
        reporter.start(total=len(todo) + already, text=conn.description, dashboard=conn.dashboard)
        for row in rows.values():
            reporter.update(row, 0)
        _collect(futures, by_key, conn, root, manifest, options, rows, run_id, reporter)
        for plan in todo:
            sweep_staging(root / plan.ob.name)
    except KeyboardInterrupt:
        interrupted = True
        conn.client.cancel(list(futures), force=True)
        _log.warning("interrupted: %d of %d OB(s) of this run finished; run the same command again to do the "
                     "rest", sum(p.ob.name in rows for p in todo), len(todo))
    finally:
        reporter.close()
        manifest.write()
        conn.client.close()
        if conn.cluster is not None:
            conn.cluster.close()
    return interrupted


def _running(client, keys, slots: int) -> int:
    """OBs being run now: our tasks assigned to workers, at most one per worker thread."""
    try:
        return min(slots, sum(k in keys for ks in client.processing().values() for k in ks))
    except Exception:  # noqa: BLE001 - diagnostics only
        return 0


def _collect(futures, by_key, conn, root, manifest, options, rows, run_id, reporter) -> None:
    from distributed import as_completed

    ac = as_completed(futures)
    keys, last_poll = set(by_key), 0.0
    while not ac.is_empty():
        batch = ac.next_batch(block=False)
        if not batch:
            if time.monotonic() - last_poll > 5.0:
                reporter.tick(_running(conn.client, keys, conn.slots))
                last_poll = time.monotonic()
            time.sleep(0.25)
            continue
        for fut in batch:
            plan = by_key[fut.key]
            rec = _outcome(fut)
            _write_log(root, plan.ob.name, rec.pop("log", []))
            manifest.obs[plan.ob.name] = _record_done(plan, rec, options, run_id)
            rows[plan.ob.name] = _row(plan.ob.name, rec, rec["status"])
            keys.discard(fut.key)
            fut.release()
            reporter.update(rows[plan.ob.name], _running(conn.client, keys, conn.slots))
            manifest.write(throttle=0.0 if len(by_key) <= 200 else 1.0)


def _outcome(fut) -> dict:
    """The record of a finished future: the task's own, or the failure of the task itself."""
    from distributed import KilledWorker

    try:
        return fut.result()
    except KilledWorker as exc:
        return {"status": "failed", "message": f"worker died while running it, {exc.allowed_failures + 1} "
                f"time(s) (out of memory? see the worker logs)", "inputs": [], "worker": ""}
    except Exception as exc:  # noqa: BLE001 - an OB's internal error must not stop the others
        return {"status": "failed", "message": f"internal error: {type(exc).__name__}: {exc}", "worker": ""}


# ---------------------------------------------------------------------------
# command line: numina-crmasks batch ...
# ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="numina-crmasks batch",
        description="Run many observing blocks (OBs), one Dask task each, into OUT/<OB name>/. "
                    "Re-running the same command skips the OBs already done (see OUT/batch_manifest.json).")
    p.add_argument("sources", nargs="*", metavar="PARAMS.yaml|DIR",
                   help="parameter files (OB name: file name without .yaml) or OB folders holding one")
    p.add_argument("--from", dest="from_list", metavar="LIST.txt", action="append", default=[],
                   help="file listing parameter files or OB folders, one a line (# comments)")
    p.add_argument("--output-root", "--output_root", required=True, metavar="OUT",
                   help="root of the products")
    p.add_argument("--scheduler", metavar="ADDRESS", help="existing Dask scheduler (e.g. tcp://host:8786); "
                   "default: a local cluster of processes")
    p.add_argument("--workers", type=_positive, metavar="N",
                   help="local worker processes (default: one per core, fewer if memory is short)")
    p.add_argument("--threads-per-worker", type=_positive, default=1, metavar="T",
                   help="threads of each local worker (default 1)")
    p.add_argument("--retries", type=_non_negative, default=2, metavar="K",
                   help="times a failed task or a dead worker's OB is tried again (default 2)")
    p.add_argument("--memory-limit", type=_memory, metavar="BYTES",
                   help="memory limit of each local worker, e.g. 4GB (default: from the frame size)")
    p.add_argument("--no-figures", action="store_true", help="do not write the diagnostic figures")
    p.add_argument("--force", action="store_true", help="run every OB, even those up to date")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], help="logging level")
    return p


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 1")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 0")
    return value


def _memory(text: str) -> float:
    from dask.utils import parse_bytes
    try:
        return float(parse_bytes(text))
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 4GB or 2.5GiB") from None


class _DropShutdownNoise(logging.Filter):
    """Hide the nanny's "still alive after N seconds, killing" at shutdown (the batch is over then)."""

    def filter(self, record):
        return "still alive after" not in record.getMessage()


def quiet_dask(level: str = "INFO") -> None:
    """Dask's own INFO lines (cluster start and stop) only with ``--log-level DEBUG``."""
    if level != "DEBUG":
        for name in ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.worker",
                     "distributed.core", "distributed.http.proxy"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("distributed.nanny").addFilter(_DropShutdownNoise())


def main(argv: list[str] | None = None) -> int:
    """``numina-crmasks batch ...``; returns the exit status.

    0: every OB done or up to date; 1: one or more OBs failed (see the
    summary); 2: invalid batch (nothing run); 130: interrupted.
    """
    from .batchreport import make_reporter, print_summary
    from .cli import _configure_logging

    args = _parser().parse_args(argv)
    _configure_logging(args.log_level)
    quiet_dask(args.log_level)
    try:
        if args.scheduler and (args.workers or args.memory_limit or args.threads_per_worker != 1):
            raise InputError("--workers, --threads-per-worker and --memory-limit set up the local cluster; "
                             "with --scheduler the cluster's own workers are used")
        sources = [Path(s) for s in args.sources]
        for listing in args.from_list:
            sources += read_list(listing)
        obs = discover(sources)
        result = run_batch(obs, args.output_root, scheduler=args.scheduler, workers=args.workers,
                           threads_per_worker=args.threads_per_worker, retries=args.retries,
                           memory_limit=args.memory_limit, figures=not args.no_figures, force=args.force,
                           reporter=make_reporter())
    except (ConfigError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; OBs already finished are kept (run the same command again for the rest)",
              file=sys.stderr)
        return 130
    print_summary(result)
    if result.interrupted:
        return 130
    return 0 if result.ok else 1

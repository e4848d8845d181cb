"""Batch mode on a real Dask cluster: a scheduler and two workers started as separate processes.

Everything listens on 127.0.0.1 only (random ports, HTTP servers on 127.0.0.1:0)
and is torn down at the end of the module.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from megara_crdetect import cli
from megara_crdetect.batch import MANIFEST, STAGING_PREFIX, SUMMARY, run_batch
from megara_crdetect.config import params_yaml
from megara_crdetect.examples import simulate_example, write_exposures

SHAPE = (120, 160)
BIN = Path(sys.executable).parent


def _write_ob(folder: Path, seed: int, *, example: int = 1, shape=SHAPE, requirements=None) -> Path:
    folder.mkdir(parents=True)
    sim = simulate_example(example, shape=shape, seed=seed)
    files = write_exposures(sim, folder)
    params = folder / "params.yaml"
    params.write_text(params_yaml([p.name for p in files], inputs={"gain": 1.0, "rnoise": 3.4, "bias": 0.0},
                                  requirements=requirements or {}))
    return params


def _staging_left(root: Path) -> list[Path]:
    return [p for p in root.rglob(STAGING_PREFIX + "*")]


def _manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())["obs"]


def _summary(root: Path) -> dict:
    with (root / SUMMARY).open() as fh:
        return {row["OB"]: row for row in csv.DictReader(fh)}


# ---------------------------------------------------------------------------
# the cluster: `dask scheduler` and two `dask worker` processes
# ---------------------------------------------------------------------------


class _DaskProcesses:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.logs: list = []
        self.address = ""

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        config = self.tmp / "dask-config"   # as docs/batch.md advises for megara-crdetect workers
        config.mkdir(exist_ok=True)
        (config / "megara.yaml").write_text("distributed:\n  nanny:\n    pre-spawn-environ:\n"
                                            "      MALLOC_TRIM_THRESHOLD_: null\n")
        env = dict(os.environ, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="2", MPLBACKEND="Agg",
                   DASK_CONFIG=str(config))
        fh = (self.tmp / log).open("w")
        self.logs.append(fh)
        proc = subprocess.Popen([str(BIN / "dask"), *args], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                cwd=self.tmp, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        sched_file = self.tmp / "scheduler.json"
        self._spawn(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)],
                    "scheduler.log")
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                log = (self.tmp / "scheduler.log").read_text()
                raise RuntimeError(f"dask scheduler did not start: {log}")
            time.sleep(0.1)
        time.sleep(0.2)
        self.address = json.loads(sched_file.read_text())["address"]
        for k in range(2):
            self._spawn(["worker", "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
                         "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                         "--dashboard-address", "127.0.0.1:0",
                         "--memory-limit", "0", "--local-directory", str(self.tmp / f"w{k}"),
                         "--name", f"w{k}"], f"worker{k}.log")
        with self.client() as client:
            client.wait_for_workers(2, timeout=90)

    def client(self):
        from distributed import Client
        return Client(self.address, timeout="30s")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        for fh in self.logs:
            fh.close()


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    procs = _DaskProcesses(tmp_path_factory.mktemp("dask"))
    try:
        procs.start()
        yield procs
    finally:
        procs.stop()


# ---------------------------------------------------------------------------
# (a) + (d): a batch by address, compared with single runs; a malformed OB among good ones
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    root = tmp_path_factory.mktemp("obs")
    good = [_write_ob(root / "ob_a", 1).parent,
            _write_ob(root / "ob_flux", 3, example=3, requirements={"flux_factor": "auto"}).parent]
    bad_key = _write_ob(root / "ob_badkey", 4)
    bad_key.write_text(bad_key.read_text().replace("la_sigclip: 5.0", "la_sigclip: -3"))
    missing = _write_ob(root / "ob_missing", 5)
    (missing.parent / "fake_2.fits").unlink()
    return {"good": good, "bad": [bad_key.parent, missing.parent]}


@pytest.fixture(scope="module")
def batch_by_address(dask_cluster, obs, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch") / "OUT"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = cli.main(["batch", *map(str, obs["good"] + obs["bad"]), "--output-root", str(out),
                           "--scheduler", dask_cluster.address, "--no-figures"])
    return status, out, stdout.getvalue()


def _fits_equal(a: Path, b: Path) -> None:
    with fits.open(a) as ha, fits.open(b) as hb:
        assert len(ha) == len(hb), a.name
        for x, y in zip(ha, hb):
            if x.data is None:
                assert y.data is None
            elif isinstance(x.data, np.ndarray) and x.data.dtype.names is None:
                np.testing.assert_array_equal(x.data, y.data, err_msg=f"{a.name}[{x.name}]")
            else:
                assert x.data.tobytes() == y.data.tobytes(), f"{a.name}[{x.name}]"


def test_batch_by_address_equals_single_runs(batch_by_address, obs, tmp_path):
    status, out, _ = batch_by_address
    summary = _summary(out)
    for ob in obs["good"]:
        assert summary[ob.name]["status"] == "done"
        single = tmp_path / ob.name
        assert cli.main([str(ob / "params.yaml"), "--output_dir", str(single), "--no-figures"]) == 0
        names = sorted(p.name for p in single.iterdir())
        assert sorted(p.name for p in (out / ob.name).iterdir()) == names
        for name in names:
            if name.endswith(".fits"):
                _fits_equal(single / name, out / ob.name / name)
            else:
                assert (single / name).read_text() == (out / ob.name / name).read_text(), name
    flux = [float(f) for f in summary["ob_flux"]["flux_factors"].split()]
    assert flux != [1.0, 1.0, 1.0] and int(summary["ob_a"]["mediancr_pixels"]) > 0
    manifest = _manifest(out)
    rec = manifest["ob_a"]
    assert [Path(i["path"]).name for i in rec["inputs"]] == ["fake_1.fits", "fake_2.fits", "fake_3.fits"]
    assert all(len(i["sha256"]) == 64 and i["size"] > 0 for i in rec["inputs"])
    assert rec["config"]["params"]["la_sigclip"] == 5.0 and rec["worker"].startswith("tcp://127.0.0.1:")


def test_malformed_ob_among_good_ones(batch_by_address, obs):
    status, out, printed = batch_by_address
    assert status == 1
    summary = _summary(out)
    assert [summary[ob.name]["status"] for ob in obs["good"]] == ["done"] * 2
    assert summary["ob_badkey"]["status"] == "failed"
    assert summary["ob_badkey"]["message"] == "error: requirements.la_sigclip = -3: must be > 0"
    assert summary["ob_missing"]["status"] == "failed"
    assert summary["ob_missing"]["message"].startswith("error: images[1] = 'fake_2.fits': file not found")
    line = next(x for x in printed.splitlines() if x.startswith("ob_badkey"))
    assert "la_sigclip = -3" in line
    assert not (out / "ob_badkey").exists() or not any((out / "ob_badkey").iterdir())
    assert not any((out / "ob_missing").glob("*.fits"))
    assert not _staging_left(out)


def test_name_collision_is_an_error_before_anything_runs(tmp_path, capsys):
    one, two = tmp_path / "n1" / "ob" / "params.yaml", tmp_path / "n2" / "ob" / "params.yaml"
    for params in (one, two):
        params.parent.mkdir(parents=True)
        params.write_text(params_yaml(["a.fits", "b.fits", "c.fits"]))
    out = tmp_path / "OUT"
    assert cli.main(["batch", str(one.parent), str(two.parent), "--output-root", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: OB name 'ob' given twice") and str(one.parent) in err
    assert not out.exists()


# ---------------------------------------------------------------------------
# (b) a worker killed while it runs an OB
# ---------------------------------------------------------------------------


def test_killed_worker_ob_is_redone_nothing_partial(dask_cluster, tmp_path):
    victim = _write_ob(tmp_path / "victim", 11, shape=(300, 400)).parent
    other = _write_ob(tmp_path / "other", 12, shape=(300, 400)).parent
    out = tmp_path / "OUT"
    box = {}
    thread = threading.Thread(target=lambda: box.update(result=run_batch(
        [victim, other], out, scheduler=dask_cluster.address, figures=False)))
    thread.start()
    with dask_cluster.client() as client:
        try:
            deadline = time.monotonic() + 120
            while not list((out / "victim").glob(STAGING_PREFIX + "*")):   # the OB is writing its products
                assert time.monotonic() < deadline and thread.is_alive(), "victim never started"
                time.sleep(0.02)
            where = [w for w, keys in client.processing().items() if any("ob-victim-" in k for k in keys)]
            pids = client.run(os.getpid, workers=where)
            killed = pids[where[0]]
            os.kill(killed, signal.SIGKILL)
        finally:
            thread.join(timeout=180)
        client.wait_for_workers(2, timeout=90)   # the nanny restarts the killed worker
    result = box["result"]
    assert [r["status"] for r in result.rows] == ["done", "done"]
    rec = _manifest(out)["victim"]
    assert rec["pid"] != killed and rec["stale_staging_removed"] >= 1   # redone, after the dead one's stage
    assert not _staging_left(out)
    assert sorted(p.name for p in (out / "victim").iterdir()) == sorted(p["name"] for p in rec["products"])
    with fits.open(out / "victim" / "crmasks.fits") as hdul:
        assert hdul["MEDIANCR"].data.shape == (300, 400)


# ---------------------------------------------------------------------------
# (c) the whole batch interrupted, then run again
# ---------------------------------------------------------------------------


def test_interrupted_batch_rerun_does_only_unfinished(dask_cluster, tmp_path):
    nobs = 10  # enough that the batch is still running when the first OB is done (2 workers)
    sources = [str(_write_ob(tmp_path / f"ob{k}", 20 + k).parent) for k in range(nobs)]
    out = tmp_path / "OUT"
    cmd = [str(BIN / "numina-crmasks"), "batch", *sources, "--output-root", str(out), "--scheduler",
           dask_cluster.address, "--no-figures"]
    env = dict(os.environ, MPLBACKEND="Agg")
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    done = set()
    while not done:
        assert time.monotonic() < deadline and first.poll() is None, "no OB finished"
        if (out / MANIFEST).exists():
            with contextlib.suppress(ValueError):
                done = {k for k, v in _manifest(out).items() if v.get("status") == "done"}
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    first_done = {k for k, v in _manifest(out).items() if v.get("status") == "done"}
    first_runs = {k: _manifest(out)[k]["run"] for k in first_done}
    assert 1 <= len(first_done) < nobs, err
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert second.returncode == 0, second.stderr
    manifest, summary = _manifest(out), _summary(out)
    assert {k for k, v in summary.items() if v["status"] == "skipped"} == first_done
    redone = {k for k, v in summary.items() if v["status"] == "done"}
    assert redone == {f"ob{k}" for k in range(nobs)} - first_done
    assert all(manifest[k]["run"] == first_runs[k] for k in first_done)
    assert f"{nobs - len(first_done)} to run, {len(first_done)} up to date" in second.stderr
    assert not _staging_left(out)


# ---------------------------------------------------------------------------
# the default: a LocalCluster; interactive forced off
# ---------------------------------------------------------------------------


def test_default_local_cluster_forces_interactive_off(tmp_path, caplog):
    params = _write_ob(tmp_path / "inter", 7, requirements={"interactive": True})
    out = tmp_path / "OUT"
    with caplog.at_level("INFO", logger="megara_crdetect"):
        result = run_batch([params], out, figures=False)
    assert [r["status"] for r in result.rows] == ["done"], result.rows
    text = caplog.text
    assert "interactive forced off for OB params" in text
    assert "local Dask cluster: 1 worker process(es) x 1 thread(s)" in text
    assert "threads per OB: one per core" in text   # alone on the machine: the runner's own threads
    assert (out / "params" / "crmasks.fits").is_file() and not _staging_left(out)
    assert _manifest(out)["params"]["config"]["params"]["interactive"] is False


def test_list_file_and_ob_names(tmp_path):
    from megara_crdetect.batch import discover, read_list
    from megara_crdetect.errors import InputError

    (tmp_path / "n" / "ob1").mkdir(parents=True)
    (tmp_path / "n" / "ob1" / "p.yaml").write_text("images: []\n")
    (tmp_path / "n" / "ob2.yml").write_text("images: []\n")
    listing = tmp_path / "n" / "list.txt"
    listing.write_text("# night 1\nob1\n\n ob2.yml  # second OB\n")
    obs = discover(read_list(listing))
    assert [(o.name, o.params.name) for o in obs] == [("ob1", "p.yaml"), ("ob2", "ob2.yml")]
    (tmp_path / "n" / "ob1" / "q.yaml").write_text("images: []\n")
    with pytest.raises(InputError, match=r"OB folder .*ob1': 2 parameter files"):
        discover([tmp_path / "n" / "ob1"])
    (tmp_path / "n" / "batch_logs.yaml").write_text("images: []\n")
    with pytest.raises(InputError, match="the name 'batch_logs' is reserved"):
        discover([tmp_path / "n" / "batch_logs.yaml"])
    with pytest.raises(InputError, match="no such parameter file or OB folder"):
        discover([tmp_path / "nothing.yaml"])

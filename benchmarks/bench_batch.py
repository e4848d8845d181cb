"""Batch throughput: a serial loop of ``numina-crmasks`` against ``numina-crmasks batch``, same run.

``python benchmarks/bench_batch.py [--obs 16] [--shape 1596 2016] [--workdir DIR]`` writes N
simulated OBs of three exposures (example 1 of the guide, one seed per OB),
then, in the same run:

1. serial: one ``numina-crmasks PARAMS --output_dir D --no-figures`` after another;
2. batch: ``numina-crmasks batch OB... --output-root OUT --no-figures`` on the default
   LocalCluster (one single-threaded worker process per core).

For each it reports wall time, throughput (OB/min), the CPU seconds of our
process tree (``getrusage(RUSAGE_CHILDREN)``, exact) as a fraction of wall x
cores ("own busy"), the busy fraction of every core from ``/proc/stat``
(machine-wide: includes whatever else runs), and for the batch the peak
resident memory (``VmHWM``) of each worker process.  Run it alone on the
machine (``flock /tmp/heavy.lock python benchmarks/bench_batch.py``) and say
what else was running: on a shared machine the /proc/stat figures include the
other users' load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def write_obs(root: Path, n: int, shape: tuple[int, int]) -> list[Path]:
    """N OB folders ``ob01``... each with fake_1..3.fits and params.yaml."""
    from megara_crdetect.config import params_yaml
    from megara_crdetect.examples import simulate_example, write_exposures

    folders = []
    for k in range(1, n + 1):
        folder = root / f"ob{k:02d}"
        if not (folder / "params.yaml").exists():
            folder.mkdir(parents=True, exist_ok=True)
            sim = simulate_example(1, shape=shape, seed=1000 + k)
            files = write_exposures(sim, folder)
            (folder / "params.yaml").write_text(
                params_yaml([p.name for p in files], inputs={"gain": 1.0, "rnoise": 3.4, "bias": 0.0},
                            requirements={"maxplots": 0}))
        folders.append(folder)
    return folders


def _cpu_ticks() -> list[tuple[int, int]]:
    """(busy, total) jiffies of every core from /proc/stat."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            vals = [int(v) for v in line.split()[1:]]
            idle = vals[3] + vals[4]
            out.append((sum(vals[:8]) - idle, sum(vals[:8])))
    return out


def _descendants(pid: int) -> list[int]:
    import psutil
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _vmhwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Sampler:
    """Peak VmHWM of the descendants of a process, sampled every ``period`` s."""

    def __init__(self, period: float = 0.25):
        self.period = period
        self.peaks: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self.root: int | None = None

    def run(self) -> None:
        while not self._stop.wait(self.period):
            if self.root is None:
                continue
            for pid in [self.root, *_descendants(self.root)]:
                hwm = _vmhwm_mb(pid)
                if hwm is not None:
                    self.peaks[pid] = max(self.peaks.get(pid, 0.0), hwm)
                    self.names.setdefault(pid, _cmdline(pid))

    def stop(self) -> None:
        self._stop.set()


def timed(cmds: list[list[str]], log: Path) -> dict:
    """Run commands one after another; wall, CPU of the tree, per-core busy, peak RSS of descendants."""
    env = dict(os.environ, MPLBACKEND="Agg")
    sampler = Sampler()
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks0, t0 = _cpu_ticks(), time.perf_counter()
    status = []
    with log.open("w") as fh:
        for cmd in cmds:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
            sampler.root = proc.pid
            status.append(proc.wait())
    wall = time.perf_counter() - t0
    ticks1 = _cpu_ticks()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler.stop()
    thread.join()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    cores = len(ticks0)
    busy = [(b1 - b0) / max(t1 - t0_, 1) for (b0, t0_), (b1, t1) in zip(ticks0, ticks1)]
    workers = {pid: mb for pid, mb in sampler.peaks.items() if "spawn_main" in sampler.names[pid]}
    return {"status": status, "wall_s": round(wall, 2), "cpu_s": round(cpu, 1),
            "own_busy": round(cpu / (wall * cores), 3), "core_busy": [round(b, 3) for b in busy],
            "worker_peak_rss_mb": sorted(round(v) for v in workers.values()),
            "max_child_peak_rss_mb": round(max(sampler.peaks.values(), default=0.0))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--obs", type=int, default=16)
    p.add_argument("--shape", type=int, nargs=2, default=(1596, 2016), metavar=("NY", "NX"))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_batch"))
    p.add_argument("--keep", action="store_true", help="keep the products")
    args = p.parse_args(argv)
    shape = tuple(args.shape)
    data = args.workdir / f"obs_{shape[0]}x{shape[1]}"
    t0 = time.perf_counter()
    folders = write_obs(data, args.obs, shape)
    print(f"{len(folders)} OBs of {shape[1]} x {shape[0]} x 3 in {data} ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    runs = args.workdir / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    cli = str(BIN / "numina-crmasks")
    serial = timed([[cli, str(f / "params.yaml"), "--output_dir", str(runs / "serial" / f.name),
                     "--no-figures"] for f in folders], runs / "serial.log")
    print("serial:", json.dumps(serial), flush=True)
    batch = timed([[cli, "batch", *map(str, folders), "--output-root", str(runs / "batch"), "--no-figures"]],
                  runs / "batch.log")
    print("batch: ", json.dumps(batch), flush=True)
    if batch["status"] != [0]:
        print("the batch did not complete: no throughput ratio")
    ratio = serial["wall_s"] / batch["wall_s"]
    n = len(folders)
    print(f"throughput: serial {60 * n / serial['wall_s']:.2f} OB/min, "
          f"batch {60 * n / batch['wall_s']:.2f} OB/min, ratio {ratio:.2f} (goal >= 1.3)")
    print(f"own CPU busy (our processes, of {len(serial['core_busy'])} cores): "
          f"serial {serial['own_busy']:.0%}, batch {batch['own_busy']:.0%}; /proc/stat per core "
          f"(machine-wide): serial {serial['core_busy']}, batch {batch['core_busy']}")
    print(f"batch worker peak RSS (MB): {batch['worker_peak_rss_mb']}; serial largest run "
          f"{serial['max_child_peak_rss_mb']} MB")
    with open("/proc/loadavg") as fh:
        print("load average at the end:", fh.read().strip())
    if not args.keep:
        shutil.rmtree(runs, ignore_errors=True)
    return 0 if all(s == 0 for s in serial["status"]) and batch["status"] == [0] else 1


if __name__ == "__main__":
    raise SystemExit(main())

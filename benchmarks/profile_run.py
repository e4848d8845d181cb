"""Where a run spends its time and memory: resident memory sampled against the log.

Runs our command line in this process on a parameter file, samples the
resident set size (``/proc/self/status``, Linux) every 20 ms in a thread and
prints, for every log message, the time since the start, the RSS then and the
largest RSS reached before the next message::

    python benchmarks/profile_run.py params.yaml --output_dir out [--no-figures]
"""

from __future__ import annotations

import logging
import sys
import threading
import time


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class _Sampler(threading.Thread):
    def __init__(self, period: float = 0.02):
        super().__init__(daemon=True)
        self.period, self.samples, self.stop = period, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.perf_counter(), _rss_mb()))
            time.sleep(self.period)


class _Marks(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.marks = []

    def emit(self, record: logging.LogRecord) -> None:
        self.marks.append((time.perf_counter(), record.getMessage()[:90]))


def main(argv=None) -> int:
    from megara_crdetect.cli import main as cli_main

    marks = _Marks()
    logging.getLogger("megara_crdetect").addHandler(marks)
    sampler = _Sampler()
    t0 = time.perf_counter()
    marks.marks.append((t0, "start"))
    sampler.start()
    status = cli_main(list(sys.argv[1:] if argv is None else argv))
    sampler.stop.set()
    sampler.join()
    t_end = time.perf_counter()
    bounds = marks.marks + [(t_end, "end")]
    print(f"{'t [s]':>7s} {'RSS [MB]':>9s} {'peak until next [MB]':>21s}  message")
    for (ta, msg), (tb, _) in zip(bounds[:-1], bounds[1:]):
        window = [r for t, r in sampler.samples if ta <= t <= tb] or [float("nan")]
        print(f"{ta - t0:7.1f} {window[0]:9.0f} {max(window):21.0f}  {msg}")
    print(f"peak RSS {max(r for _, r in sampler.samples):.0f} MB, wall {t_end - t0:.1f} s, exit {status}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())

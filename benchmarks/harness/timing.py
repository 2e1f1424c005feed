"""Timing: several systems interleaved (so the CPU's drift does not become a difference between them),
per-call wall and thread CPU time, percentiles, and throughput."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds, and the sample count."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 4), "p90_ms": round(float(np.percentile(a, 90)), 4),
            "p99_ms": round(float(np.percentile(a, 99)), 4), "mean_ms": round(float(a.mean()), 4), "n": int(a.size)}


def median_stats(repeats: list[list[float]]) -> dict[str, float]:
    """The median over repeats of each statistic of that repeat's samples (seconds in, ms out)."""
    per = [percentiles(r) for r in repeats]
    out = {k: round(float(np.median([p[k] for p in per])), 4) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}
    return {**out, "n": len(repeats[0]), "repeats": len(repeats)}


@dataclass
class Timing:
    """Per-call wall, calling-thread CPU and process CPU seconds of one system, one list per repeat."""

    wall: list[list[float]] = field(default_factory=list)
    cpu: list[list[float]] = field(default_factory=list)
    process_cpu: list[list[float]] = field(default_factory=list)

    @property
    def samples(self) -> list[float]:
        return [x for rep in self.wall for x in rep]

    def stats(self) -> dict[str, float]:
        """``median_stats`` of the wall times, plus the median calling-thread CPU time: with one compute
        thread it stays close to the idle-machine latency when other jobs compete for the cores."""
        cpu = round(float(np.median([np.median(c) for c in self.cpu])) * 1e3, 4)
        out = {**median_stats(self.wall), "thread_cpu_p50_ms": cpu}
        if any(self.process_cpu):  # every thread's: a call that hands work to other threads costs more than its own
            out["process_cpu_p50_ms"] = round(float(np.median([np.median(c) for c in self.process_cpu])) * 1e3, 4)
        return out


def timed(fns: dict[str, Callable[[int], object]], n: int, repeats: int = 1, warmup: int = 20,
          rounds: int = 10) -> dict[str, Timing]:
    """Time several systems interleaved: after ``warmup`` untimed calls each, every repeat runs ``rounds``
    rounds of n/rounds calls per system in turn. The CPU's speed drifts by 20-30 % over minutes on these
    machines; one system after the other would turn that drift into a difference between them.
    ``fn(i)`` gets the call's index (to pick an input)."""
    for fn in fns.values():
        for i in range(warmup):
            fn(i)
    per = max(1, n // rounds)
    out = {name: Timing() for name in fns}
    for _ in range(repeats):
        for t in out.values():
            t.wall.append([])
            t.cpu.append([])
            t.process_cpu.append([])
        for rnd in range(rounds):
            for name, fn in fns.items():
                wall, cpu, pcpu = out[name].wall[-1], out[name].cpu[-1], out[name].process_cpu[-1]
                for j in range(per):
                    p0, c0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
                    fn(rnd * per + j)
                    wall.append(time.perf_counter() - t0)
                    cpu.append(time.thread_time() - c0)
                    pcpu.append(time.process_time() - p0)
    return out


def latency(fn: Callable[[int], object], n: int) -> dict[str, float]:
    """Single-query statistics of one system, ``fn(i)`` over ``n`` calls after a warm-up of up to 50."""
    return timed({"q": fn}, n, warmup=min(50, n))["q"].stats()


def rate(fn: Callable[[], object], items: int, repeats: int, warmup: int = 1) -> float:
    """Median items per second of ``fn`` (which handles ``items`` items a call) over ``repeats`` calls."""
    for _ in range(warmup):
        fn()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        rates.append(items / (time.perf_counter() - t0))
    return round(float(np.median(rates)), 1)

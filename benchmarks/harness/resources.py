"""What a run costs the machine: this process's resident memory and its peak (from /proc/self), and the CPU
time that anything else used meanwhile (from /proc/stat), a timing's witness of an idle box. Linux only;
elsewhere the readings are empty rather than wrong."""

from __future__ import annotations

import os
from pathlib import Path


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmHWM``: its peak) in MiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> float:
    """Reset the peak counter (VmHWM) where the kernel allows it; return the current RSS in MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return rss_mib()


def peak_growth_mib(start_mib: float) -> float:
    """How far the peak (VmHWM) rose above ``start_mib``, the RSS that ``reset_peak`` returned."""
    return round(rss_mib("VmHWM") - start_mib, 1)


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(busy, steal) CPU seconds of the whole machine since boot (/proc/stat) and this process's own CPU
    seconds, or None off Linux: what ``others_cpu`` subtracts from."""
    try:
        f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    busy = f[0] + f[1] + f[2] + f[5] + f[6]  # user nice system irq softirq
    return busy / tick, f[7] / tick, sum(os.times()[:2])


def others_cpu(before: tuple[float, float, float] | None) -> dict[str, float]:
    """CPU seconds that anything but this process ran since ``before = cpu_snapshot()`` (a daemon, the
    kernel's reclaim, another job), and the hypervisor's steal: a timing's witness of an idle box."""
    after = cpu_snapshot()
    if before is None or after is None:
        return {}
    others = (after[0] - before[0]) - (after[2] - before[2])
    return {"others_cpu_s": round(max(0.0, others), 2), "steal_s": round(after[1] - before[1], 2)}

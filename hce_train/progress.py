"""The training step bar: no time estimate until a few steps have run, then one from the steps since.

A run's first step carries one-off work (fit's first corpus encode and tree build, the first batch through
the kernels), so tqdm's estimate from it is far too long: the demo's 24-step fit showed 20:50 for a run of 3
minutes. The bar shows steps and elapsed time for the first ``warm`` steps, then estimates the rest from the
average rate of the steps after them (tqdm's exponential smoothing would still carry the first step).
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

WARM_STEPS = 3  # steps left out of the estimate: one-off setup runs inside the first of them
WAITING_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<?{postfix}]"  # tqdm's default, estimate unknown


class StepBar(tqdm):
    """tqdm for training steps whose estimate waits for ``warm`` steps, then uses only the steps after them."""

    def __init__(self, *args: Any, warm: int = WARM_STEPS, **kwargs: Any) -> None:
        self._warm = warm
        self._mark: tuple[float, int] | None = None  # (time, n) when the warm steps were done
        super().__init__(*args, **kwargs)

    def update(self, n: float | None = 1) -> bool | None:
        if not self.disable and self._mark is None and self.n + (n or 0) - self.initial >= self._warm:
            self._mark = (self._time(), self.n + (n or 0))  # before the refresh, so this display already counts it
        return super().update(n)

    @property
    def format_dict(self) -> dict[str, Any]:
        d = super().format_dict
        if self.disable:
            return d
        if self._mark is None or self.n <= self._mark[1]:
            d["bar_format"] = WAITING_FORMAT  # steps and elapsed time; no rate, no estimate yet
            return d
        t0, n0 = self._mark
        elapsed = self._time() - t0
        d["rate"] = (self.n - n0) / elapsed if elapsed > 0 else None
        return d


def step_bar(total: int, desc: str, enabled: bool, initial: int = 0) -> StepBar:
    """A step bar on stderr (tqdm's default stream); ``enabled`` False gives a silent one."""
    return StepBar(total=total, initial=initial, desc=desc, unit="step", disable=not enabled)

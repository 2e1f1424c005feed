"""The training step bar (issue 34, item 5): no estimate while one-off setup dominates the first steps, then
an estimate from the steps after them, where tqdm's own one carried the first step for the whole run."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("tqdm")

from tqdm import tqdm  # noqa: E402

from hce_train.progress import WARM_STEPS, StepBar, step_bar  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _run(bar: tqdm, clock: Clock, seconds: list[float]) -> list[str]:
    """Advance the clock by each step's seconds, update, and return the bar as shown after each step."""
    bar._time = clock
    bar.start_t = bar.last_print_t = clock()
    shown = []
    for s in seconds:
        clock.t += s
        bar.update(1)
        shown.append(str(bar))
    return shown


def test_the_estimate_waits_for_the_warm_steps_then_uses_only_the_steps_after_them():
    steps = [60.0] + [1.0] * 23  # a first step with the tree build, then 1 s a step: 24 steps, 83 s in all
    ours = _run(StepBar(total=24, file=io.StringIO(), mininterval=0, unit="step"), Clock(), steps)
    waiting, estimated = ours[:WARM_STEPS], ours[WARM_STEPS:]
    assert all("<?]" in line and "step/s" not in line for line in waiting), waiting  # steps and elapsed only
    assert f"{WARM_STEPS}/24 [01:0{WARM_STEPS - 1}<?]" in waiting[-1]
    # From the next step on: the remaining steps at the 1 s a step measured after the warm ones.
    for step, line in enumerate(estimated, WARM_STEPS + 1):
        assert f"{step}/24" in line and f"<00:{24 - step:02d},  1.00step/s]" in line, line
    # tqdm's own estimate at the same points: minutes for a run with seconds left.
    theirs = _run(tqdm(total=24, file=io.StringIO(), mininterval=0, unit="step"), Clock(), steps)
    assert "<23:00" in theirs[0] and "<00:0" not in theirs[WARM_STEPS + 1]


def test_a_resumed_run_counts_its_warm_steps_from_where_it_resumes():
    ours = _run(StepBar(total=24, initial=10, file=io.StringIO(), mininterval=0), Clock(), [30.0] + [2.0] * 4)
    assert all("<?]" in line for line in ours[:WARM_STEPS]) and "11/24" in ours[0]
    assert f"{11 + WARM_STEPS}/24" in ours[WARM_STEPS] and f"<00:{2 * (24 - 11 - WARM_STEPS):02d}" in ours[WARM_STEPS]


def test_a_disabled_bar_writes_nothing():
    out = io.StringIO()
    bar = StepBar(total=5, desc="fit", unit="step", disable=True, file=out)
    for _ in range(5):
        bar.update(1)
        bar.set_postfix(loss="0.5")
    bar.close()
    assert out.getvalue() == "" and step_bar(5, "fit", enabled=False).disable

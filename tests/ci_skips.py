"""In CI, a test skipped because a package that CI installs is missing is a failure, not a skip.

Test modules guard optional packages with ``pytest.importorskip`` so that a one-role install (``hce[serve]``
alone) runs what it can. CI installs every role (scripts/setup-env.sh), so there such a skip means a broken
extra, and it used to pass silently: a whole test file reported as one skip line. When the ``CI`` environment
variable is set (``true``, ``1`` or ``yes``, as CI services set it; .ci/run sets it too), a skip from
``importorskip`` of a module whose distribution scripts/setup-env.sh installs (the project's extras it names,
or a package it pins by name) fails the collection or the test instead, naming the distribution.

Skips for anything else stay skips: a package no extra declares, a GPU, a data set that is not on disk.
conftest.py imports the two hooks from here. A system program that setup-env.sh installs (Chromium for the
browser test) is required the same way through ``skip_or_fail_in_ci``.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SETUP_ENV = ROOT / "scripts" / "setup-env.sh"
IMPORTORSKIP = re.compile(r"could not import '([\w.]+)'")
# Import names whose distribution is not the import name written the PyPI way, for a package that is missing
# (an installed one is looked up in its own metadata).
ALIASES = {"faiss": "faiss-cpu", "Stemmer": "pystemmer", "optimum": "optimum-onnx",
           "pytrec_eval": "pytrec-eval-terrier", "sklearn": "scikit-learn", "yaml": "pyyaml"}


def ci_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@functools.cache
def ci_installed() -> frozenset[str]:
    """Canonical names of the distributions scripts/setup-env.sh installs: every requirement of the extras in
    its ``pip install -e ".[…]"`` (markers evaluated for this platform) and each package it pins by name."""
    text = SETUP_ENV.read_text()
    extras = [e.strip() for m in re.finditer(r'-e\s+"\.\[([^\]]+)\]"', text) for e in m.group(1).split(",")]
    names = {canonicalize_name(m.group(1)) for m in re.finditer(r'"([A-Za-z0-9_.\-]+)==[^"]+"', text)}
    for line in _declared():
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras):
            names.add(canonicalize_name(req.name))
    return frozenset(names)


def _declared() -> list[str]:
    """hce's requirements with their extras as markers: from the installed metadata, or from pyproject.toml
    when the tests run from a checkout that was never installed."""
    try:
        return md.requires("hce") or []
    except md.PackageNotFoundError:
        import tomllib

        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        out = list(project.get("dependencies", []))
        for extra, reqs in project.get("optional-dependencies", {}).items():
            out += [f"{r}; extra == '{extra}'" if ";" not in r else f"{r} and extra == '{extra}'" for r in reqs]
        return out


def distributions_of(module: str) -> set[str]:
    """Canonical distribution names that may provide ``module`` (``optimum.exporters.onnx`` -> optimum-onnx)."""
    top = module.split(".")[0]
    found = {canonicalize_name(d) for d in md.packages_distributions().get(top, [])}
    for name in (module, top):
        if name in ALIASES:
            found.add(canonicalize_name(ALIASES[name]))
    return found or {canonicalize_name(top)}


def required_missing(reason: str) -> str | None:
    """For a skip reason, the error to report instead when CI should have had the module; else None."""
    m = IMPORTORSKIP.search(reason)
    if not m:
        return None
    dists = sorted(distributions_of(m.group(1)) & ci_installed())
    if not dists:
        return None
    return (f"CI installs {', '.join(dists)} (scripts/setup-env.sh), so this skip is a broken install, "
            f"not an optional package: {reason}")


def skip_or_fail_in_ci(reason: str, installer: str) -> NoReturn:
    """A requirement that is no Python package (a system program such as Chromium): skip outside CI, fail under
    CI, where ``installer`` (what scripts/setup-env.sh runs for it) should have provided it."""
    if ci_enabled():
        pytest.fail(f"CI installs it ({installer}, scripts/setup-env.sh), so this is a broken install: {reason}",
                    pytrace=False)
    pytest.skip(reason)


def _skip_reason(longrepr: object) -> str:
    """A skip report's reason: pytest keeps it as (path, line, reason)."""
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    """A module-level ``importorskip`` skips the whole file at collection: fail it instead under CI."""
    rep = yield
    if rep.skipped and ci_enabled() and (msg := required_missing(_skip_reason(rep.longrepr))):
        rep.outcome, rep.longrepr = "failed", msg
    return rep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """An ``importorskip`` inside a fixture or a test: fail that test instead under CI."""
    rep = yield
    if rep.skipped and ci_enabled() and call.excinfo is not None and call.excinfo.errisinstance(pytest.skip.Exception):
        msg = required_missing(str(call.excinfo.value.msg))
        if msg:
            rep.outcome, rep.longrepr = "failed", msg
    return rep

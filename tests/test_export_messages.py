"""onnxruntime's harmless export warnings (issue 34, item 4): held back by default and replaced by one line of
ours that says what was skipped and why it is harmless; -v shows them as they are; anything else passes."""

from __future__ import annotations

import io
import logging

import pytest

from hce_export.tool_messages import KNOWN, summary, tool_output

# What onnxruntime 1.2x-1.3x writes during an export of a BERT-like encoder (see the module docstring).
SHAPE_PRINT = "failed in shape inference <class 'TypeError'>"
SHAPE_LOG = ("fusion_skiplayernorm", "symbolic shape inference disabled or failed.")
PRE_LOG = "Please consider to run pre-processing before quantization. Refer to example: https://example.invalid"
THIRD_PARTY = ("failed in shape inference", "symbolic shape inference disabled or failed",
               "Please consider to run pre-processing before quantization")


def _noisy_tools() -> None:
    """Stands for optimize_model + quantize_dynamic: their known messages, one unknown print and warning."""
    print(SHAPE_PRINT)
    logging.getLogger(SHAPE_LOG[0]).warning(SHAPE_LOG[1])
    logging.getLogger(SHAPE_LOG[0]).warning(SHAPE_LOG[1])
    logging.warning(PRE_LOG)  # the quantiser logs on the root logger
    print("an unknown line from a tool")
    logging.getLogger("onnx_model").warning("an unknown warning that may matter")


@pytest.fixture
def root_stream():
    """The root logger with one stream handler (what setup_logging installs), INFO for our loggers."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("hce_export").setLevel(logging.INFO)
    yield stream
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def test_known_messages_become_one_line_and_unknown_ones_pass(root_stream, capsys):
    with tool_output() as window:
        _noisy_tools()
    logged = root_stream.getvalue()
    out, err = capsys.readouterr()
    assert out == ""  # stdout stays the command's JSON
    assert not any(m in logged or m in err for m in THIRD_PARTY), (logged, err)
    assert "an unknown line from a tool" in err and "WARNING onnx_model: an unknown warning that may matter" in logged
    ours = [line for line in logged.splitlines() if "onnxruntime's tools skipped" in line]
    assert len(ours) == 1 and ours[0].startswith("INFO hce_export.tool_messages")
    assert "SkipLayerNormalization fusion" in ours[0] and "pre-processing" in ours[0] and "-v" in ours[0]
    assert window.kinds == set(KNOWN) and len(window.held) == 4
    assert all(gate_free(h) for h in logging.getLogger().handlers)  # the gate is gone afterwards
    logging.getLogger(SHAPE_LOG[0]).warning(SHAPE_LOG[1])
    assert SHAPE_LOG[1] in root_stream.getvalue()  # outside a window nothing is held back


def gate_free(handler: logging.Handler) -> bool:
    return not handler.filters


def test_show_lets_them_through_as_they_are(root_stream, capsys):
    with tool_output(show=True):
        _noisy_tools()
    logged = root_stream.getvalue()
    _, err = capsys.readouterr()
    assert SHAPE_PRINT in err and f"WARNING {SHAPE_LOG[0]}: {SHAPE_LOG[1]}" in logged and PRE_LOG in logged
    assert logged.count("onnxruntime's tools skipped") == 1  # our explanation as well


def test_nested_windows_report_once_and_only_what_was_seen(root_stream, capsys):
    with tool_output():
        with tool_output():
            print(SHAPE_PRINT)
        with tool_output():
            logging.getLogger(SHAPE_LOG[0]).warning(SHAPE_LOG[1])
    lines = [x for x in root_stream.getvalue().splitlines() if "onnxruntime's tools skipped" in x]
    assert len(lines) == 1 and "SkipLayerNormalization" in lines[0] and "pre-processing" not in lines[0]
    assert capsys.readouterr().out == ""
    with tool_output():
        pass
    assert root_stream.getvalue().count("onnxruntime's tools skipped") == 1  # nothing seen, nothing said


def test_a_failure_inside_shows_what_was_held_back(root_stream):
    with pytest.raises(RuntimeError), tool_output():
        print(SHAPE_PRINT)
        raise RuntimeError("boom")
    logged = root_stream.getvalue()
    assert f"before the failure: {SHAPE_PRINT}" in logged and "onnxruntime's tools skipped" not in logged


def test_without_logging_set_up_nothing_is_installed_for_good(capsys):
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = []
    try:
        with tool_output():
            logging.warning(PRE_LOG)  # would call basicConfig() on a root logger with no handler
            logging.getLogger("onnx_model").warning("an unknown warning that may matter")
        assert root.handlers == []
    finally:
        root.handlers[:] = saved
    err = capsys.readouterr().err
    assert "an unknown warning that may matter" in err and "pre-processing" not in err


def test_summary_names_only_the_kinds_seen():
    assert summary(set()) is None
    assert "pre-processing" in summary({"pre_processing"}) and "SkipLayer" not in summary({"pre_processing"})


@pytest.fixture(scope="module")
def cli_runs(tiny_bert, tmp_path_factory):
    """hce-export onnx --quantize of the tiny model, at the default verbosity and with -v."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("optimum.exporters.onnx")
    from click.testing import CliRunner

    from hce_export.cli import main

    root = tmp_path_factory.mktemp("export-messages")
    runs = {}
    for name, extra in (("default", []), ("verbose", ["-v"])):
        res = CliRunner().invoke(main, ["onnx", "--model", str(tiny_bert), "--out", str(root / name), "--quantize",
                                        *extra])
        assert res.exit_code == 0, res.output
        runs[name] = res
    return runs


def test_cli_default_has_none_of_the_third_party_lines_and_one_of_ours(cli_runs):
    res = cli_runs["default"]
    assert not [line for line in res.stderr.splitlines() if any(m in line for m in THIRD_PARTY)], res.stderr
    assert res.stderr.count("onnxruntime's tools skipped") == 1
    assert res.stdout.lstrip().startswith("{")  # stdout is the JSON summary only


def test_cli_verbose_shows_them_again(cli_runs):
    err = cli_runs["verbose"].stderr
    assert all(m in err for m in THIRD_PARTY), err

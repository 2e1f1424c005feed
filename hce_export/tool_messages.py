"""onnxruntime's graph tools talk on stdout and the root logger; the messages known to be harmless become one
line of ours.

During an export onnxruntime's transformers optimizer ``print()``s ``failed in shape inference <class
'TypeError'>`` and logs ``symbolic shape inference disabled or failed.`` (logger ``fusion_skiplayernorm``):
its symbolic shape inference cannot size the exported graph (an ``Expand`` of the attention mask), so it
skips the SkipLayerNormalization fusion and leaves Add + LayerNormalization as two ops. Harmless: onnxruntime
fuses them itself when a session loads the graph, and hce-serve's CPU sessions skip that fusion on purpose
(slower there; ``hce_serve.defaults.ORT_CPU_DISABLED_OPTIMIZERS``). Its quantiser logs ``Please consider to
run pre-processing before quantization`` for any graph not passed through ``quant_pre_process`` (shape
inference and graph optimisation, which the fused graph has had); the int8 graph is validated against fp32
either way. They read like failures and are not ours, so ``tool_output`` holds them back and logs one INFO
line saying what was skipped and why it is harmless; ``show=True`` (the CLI's ``-v``) lets them through as
they are. Any other message from a third party passes through untouched: an unknown warning may matter.

A window is process-wide (stdout and the root logger's handlers are), so windows nest: an inner one (a step
of an export) reports through the outer one, which logs its line once at the end.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

OURS = ("hce_serve", "hce_train", "hce_export", "benchmarks")  # loggers whose records are never held back
# kind -> the messages of onnxruntime's tools that report it
KNOWN = {
    "shape_inference": re.compile(r"failed in shape inference|symbolic shape inference disabled or failed"),
    "pre_processing": re.compile(r"Please consider to run pre-processing before quantization"),
}
EXPLAIN = {
    "shape_inference": "the SkipLayerNormalization fusion (its shape inference cannot size this graph; onnxruntime "
                       "fuses those ops itself at session load where that pays, hce-serve's CPU sessions skip it on "
                       "purpose)",
    "pre_processing": "the quantiser's optional pre-processing (the fused graph is already optimised; the int8 "
                      "graph is validated against fp32)",
}


def kind_of(message: str) -> str | None:
    """The known harmless kind ``message`` reports, or None."""
    for kind, pattern in KNOWN.items():
        if pattern.search(message):
            return kind
    return None


def summary(kinds: set[str]) -> str | None:
    """The one line for the kinds seen (None when none was)."""
    if not kinds:
        return None
    parts = [EXPLAIN[k] for k in KNOWN if k in kinds]
    return f"onnxruntime's tools skipped {' and '.join(parts)}: harmless (-v shows their own messages)"


class _Window:
    def __init__(self, show: bool) -> None:
        self.show = show
        self.kinds: set[str] = set()
        self.held: list[str] = []  # what was held back, as it was written


class _Gate(logging.Filter):
    """On the root logger's handlers: holds back the known messages of third-party loggers."""

    def __init__(self, window: _Window) -> None:
        super().__init__()
        self.window = window
        self.last: tuple[logging.LogRecord | None, bool] = (None, True)  # one record meets every root handler

    def filter(self, record: logging.LogRecord) -> bool:
        if record is self.last[0]:
            return self.last[1]
        keep = self._decide(record)
        self.last = (record, keep)
        return keep

    def _decide(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in OURS:
            return True
        kind = kind_of(record.getMessage())
        if kind is None:
            return True
        self.window.kinds.add(kind)
        if self.window.show:
            return True
        self.window.held.append(f"{record.levelname} {record.name}: {record.getMessage()}")
        return False


class _LastResort(logging.Handler):
    """Stands in while the root logger has no handler (a library caller without logging set up): without it
    ``logging.warning`` would install a permanent stderr handler. What passes the gate goes where Python sends
    an unhandled record."""

    def emit(self, record: logging.LogRecord) -> None:
        if logging.lastResort is not None and record.levelno >= logging.lastResort.level:
            logging.lastResort.handle(record)


class _Stdout(io.TextIOBase):
    """stdout during a window: tools' print()s, line by line; what is not held back goes to stderr (stdout
    belongs to the command's JSON result)."""

    def __init__(self, window: _Window) -> None:
        self.window = window
        self.partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.partial += text
        *lines, self.partial = self.partial.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        if self.partial:
            self._line(self.partial)
            self.partial = ""

    def _line(self, line: str) -> None:
        kind = kind_of(line)
        if kind is not None:
            self.window.kinds.add(kind)
        if kind is not None and not self.window.show:
            self.window.held.append(line)
        elif line.strip():
            sys.stderr.write(line + "\n")


_lock = threading.RLock()
_active: _Window | None = None


@contextlib.contextmanager
def tool_output(show: bool = False) -> Iterator[_Window]:
    """Run onnxruntime's tools inside: their known harmless messages become one INFO line at the end; ``show``
    lets them through as well. A failure inside logs what was held back (it may explain the failure). Nested
    windows report through the outermost one."""
    global _active
    with _lock:
        if _active is not None:
            yield _active
            return
        window = _active = _Window(show)
        root = logging.getLogger()
        gate = _Gate(window)
        fallback = None
        if not root.handlers:
            fallback = _LastResort()
            root.addHandler(fallback)
        handlers = list(root.handlers)
        for h in handlers:
            h.addFilter(gate)
        sink = _Stdout(window)
        try:
            with contextlib.redirect_stdout(sink):
                yield window
        except BaseException:
            for line in window.held:
                log.info("onnxruntime, before the failure: %s", line)
            raise
        finally:
            sink.flush()
            for h in handlers:
                h.removeFilter(gate)
            if fallback is not None:
                root.removeHandler(fallback)
            _active = None
        for line in window.held:
            log.debug("held back: %s", line)
        line = summary(window.kinds)
        if line:
            log.info("%s", line)

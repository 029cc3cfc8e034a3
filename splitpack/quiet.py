"""Keep third-party libraries' warnings and log lines out of the command line's output.

torch, torchao, litert-torch and LiteRT report through three channels: Python warnings,
Python loggers, and C++ logging (absl, TFLite's logger) written straight to file descriptor 2,
where neither ``warnings`` nor ``logging`` can reach it. :func:`quiet_third_party` handles the
first two once, at the CLI's start; :func:`capture_native_stderr` wraps the few calls that
write C++ logs and shows what they wrote only if the call fails.

Both step aside when the ``splitpack`` logger is enabled for DEBUG, which ``--verbose`` does
(and a library user can do with ``logging.getLogger("splitpack").setLevel(logging.DEBUG)``).
This module imports nothing beyond the standard library: devices run it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator

__all__ = ["THIRD_PARTY_LOGGERS", "capture_native_stderr", "forward_messages", "quiet_third_party",
           "show_project_messages"]

THIRD_PARTY_LOGGERS = ("torch", "torchao", "litert_torch", "ai_edge_litert", "absl", "tensorflow", "jax",
                       "onnxscript", "onnx_ir")
# Read by the C++ libraries when they load, so they must be set before the first import.
# Level 2 keeps errors. torch sets its loggers' levels from TORCH_LOGS when imported, undoing a
# level set before ("-all": every torch logger at ERROR).
_NATIVE_LOG_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "2", "GLOG_minloglevel": "2", "TORCH_LOGS": "-all"}
# Warnings attributed to any module but splitpack's; our own stay visible, to be fixed, not hidden.
_NOT_SPLITPACK = r"(?!splitpack(\.|$)).*"

_LOG = logging.getLogger("splitpack")
# Descriptor 2 is one per process: two threads swapping it at once could leave it pointing at
# a closed capture file. Re-entrant, so captures nest within a thread.
_FD2_LOCK = threading.RLock()


def quiet_third_party(verbose: bool) -> None:
    """Silence third-party warnings and logs below ERROR for the rest of the process.

    Call it once, before the heavy libraries are imported (environment variables that their
    C++ parts read at load time are set here, unless the user set them). Settings the user
    made (``-W`` / ``PYTHONWARNINGS``, ``TF_CPP_MIN_LOG_LEVEL``, ``TORCH_LOGS``...) are kept.

    Args:
        verbose: leave every library as it is and let :func:`capture_native_stderr` pass
            output through (the ``splitpack`` logger is set to DEBUG).
    """
    if verbose:
        _LOG.setLevel(logging.DEBUG)
        return
    for name, value in _NATIVE_LOG_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if not sys.warnoptions:
        warnings.filterwarnings("ignore", module=_NOT_SPLITPACK)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a record comes (so a redirected or captured
    standard output gets the messages too)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def show_project_messages(verbose: bool) -> None:
    """Print the ``splitpack`` loggers' messages on standard output, INFO and up (DEBUG with
    ``verbose``), as bare lines: the command line's progress messages. Once per process."""
    _LOG.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(handler, _StdoutHandler) for handler in _LOG.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        _LOG.addHandler(handler)
        _LOG.propagate = False  # a library may have given the root logger a handler too


class _CallbackHandler(logging.Handler):
    """Gives ``callback`` the messages logged by one thread (the one that made it)."""

    def __init__(self, callback: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.callback, self.thread = callback, threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.callback(record.getMessage())


_FORWARDS_LOCK = threading.Lock()
_forwards = 0  # blocks of forward_messages open now, all threads together
_level_before = logging.NOTSET


@contextlib.contextmanager
def forward_messages(callback: Callable[[str], None]) -> Iterator[None]:
    """Also give ``callback`` every INFO-and-up message that this thread logs to the
    ``splitpack`` loggers (one ``logging.getLogger(__name__)`` per module) while the block
    runs: a caller's progress callback (``compile_bundle(log=...)``). INFO is enabled while any
    such block is open, in any thread, and the level before the first is restored after the
    last."""
    global _forwards, _level_before
    handler = _CallbackHandler(callback)
    with _FORWARDS_LOCK:
        if _forwards == 0:
            _level_before = _LOG.level
        _forwards += 1
        if not _LOG.isEnabledFor(logging.INFO):
            _LOG.setLevel(logging.INFO)
        _LOG.addHandler(handler)
    try:
        yield
    finally:
        with _FORWARDS_LOCK:
            _LOG.removeHandler(handler)
            _forwards -= 1
            if _forwards == 0:
                _LOG.setLevel(_level_before)


@contextlib.contextmanager
def capture_native_stderr() -> Iterator[None]:
    """Send what is written to file descriptor 2 inside the block to a temporary file.

    C++ libraries log there directly (absl's ``I0000 ...`` lines, LiteRT's ``INFO: Created
    TensorFlow Lite XNNPACK delegate``). If the block raises, the captured text is written to
    standard error before the exception propagates, so no error report is lost. Nothing is
    captured when the ``splitpack`` logger is enabled for DEBUG (``--verbose``).

    Other threads' writes to descriptor 2 during the block are captured too, and other
    threads' captures wait for it; keep the block to the one call that logs.
    """
    if _LOG.isEnabledFor(logging.DEBUG):
        yield
        return
    with _FD2_LOCK:
        _flush_stderr()
        try:
            saved = os.dup(2)
        except OSError:  # no descriptor 2 (a detached process): nothing to capture
            yield
            return
        try:
            with tempfile.TemporaryFile() as sink:
                os.dup2(sink.fileno(), 2)
                failed = True
                try:
                    yield
                    failed = False
                finally:
                    _flush_stderr()  # Python-level writes made inside the block belong to it
                    os.dup2(saved, 2)
                    if failed:
                        sink.seek(0)
                        _write_all(2, sink.read())
        finally:
            os.close(saved)


def _flush_stderr() -> None:
    with contextlib.suppress(Exception):  # a replaced or closed sys.stderr has nothing to flush
        sys.stderr.flush()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

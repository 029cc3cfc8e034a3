"""Third-party noise kept out of the CLI's output: the fd-2 capture around C++ calls, the
warnings and logger settings, and a real command with and without ``--verbose``."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import warnings

import pytest

from splitpack.quiet import THIRD_PARTY_LOGGERS, capture_native_stderr, forward_messages, quiet_third_party

# What the check greps for, plus glog/absl prefixes such as "W1201 14:15:53.394000" and
# LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate".
NOISE = re.compile(r"warning|I0000|W0000|^[IWEF]\d{4} \d\d:\d\d:\d\d|^INFO: ", re.IGNORECASE | re.MULTILINE)
NATIVE_LOG_VARIABLES = ("TF_CPP_MIN_LOG_LEVEL", "GLOG_minloglevel", "TORCH_LOGS")


@pytest.fixture
def process_state(monkeypatch):
    """Undo what quiet_third_party changes: environment, warnings filters, logger levels."""
    for name in NATIVE_LOG_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "warnoptions", [])
    names = ("splitpack", *THIRD_PARTY_LOGGERS)
    levels = {name: logging.getLogger(name).level for name in names}
    with warnings.catch_warnings():
        yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_capture_swallows_native_writes(capfd):
    with capture_native_stderr():
        os.write(2, b"I0000 00:00:1796134563.839763 19399 flatbuffer_export.cc:4410] Estimated count\n")
    os.write(2, b"after\n")  # descriptor 2 is back where it was
    assert capfd.readouterr().err == "after\n"


def test_capture_reemits_what_was_written_when_the_block_raises(capfd):
    with pytest.raises(RuntimeError, match="conversion failed"):
        with capture_native_stderr():
            os.write(2, b"E0000 the converter's reason\n")
            raise RuntimeError("conversion failed")
    assert capfd.readouterr().err == "E0000 the converter's reason\n"


def test_nested_captures_reemit_only_to_the_enclosing_one(capfd):
    with capture_native_stderr():
        with pytest.raises(ValueError, match="inner"):
            with capture_native_stderr():
                os.write(2, b"inner log\n")
                raise ValueError("inner")
    assert capfd.readouterr().err == ""


def test_captures_in_several_threads_leave_descriptor_2_in_place(capfd):
    def log_natively(index):
        with capture_native_stderr():
            os.write(2, f"thread {index}\n".encode())

    threads = [threading.Thread(target=log_natively, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_capture_passes_output_through_when_splitpack_logs_debug(capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="splitpack")  # what --verbose does
    with capture_native_stderr():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    assert capfd.readouterr().err == "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"


@pytest.mark.parametrize(("module", "hidden"), [
    ("torch.utils._pytree", True),
    ("copyreg", True),  # torch's LeafSpec FutureWarning is attributed to the standard library
    ("litert_torch._convert", True),
    ("splitpack.compiler.onnx_torch", False),  # raised from our own call: ours to fix, so shown
    ("splitpack", False),
    ("splitpack_plugin", True),
])
def test_only_splitpacks_own_warnings_are_shown(process_state, module, hidden):
    quiet_third_party(verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("noise", UserWarning, f"{module.replace('.', '/')}.py", 1, module=module)
    assert len(caught) == (0 if hidden else 1)


def test_quiet_lowers_third_party_loggers_and_sets_native_defaults(process_state, monkeypatch):
    monkeypatch.setenv("TORCH_LOGS", "+dynamo")  # a user's choice is kept
    quiet_third_party(verbose=False)
    assert all(logging.getLogger(name).getEffectiveLevel() == logging.ERROR for name in THIRD_PARTY_LOGGERS)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2" and os.environ["GLOG_minloglevel"] == "2"
    assert os.environ["TORCH_LOGS"] == "+dynamo"


@pytest.mark.parametrize("warnoptions", [[], ["default"]], ids=["verbose", "user -W option"])
def test_filters_are_left_alone_when_verbose_or_set_by_the_user(process_state, monkeypatch, warnoptions):
    monkeypatch.setattr(sys, "warnoptions", warnoptions)
    filters = list(warnings.filters)
    quiet_third_party(verbose=not warnoptions)
    assert warnings.filters == filters


def test_verbose_changes_no_library_and_enables_debug(process_state):
    levels = {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS}
    quiet_third_party(verbose=True)
    assert {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS} == levels
    assert logging.getLogger("splitpack").isEnabledFor(logging.DEBUG)
    assert not any(name in os.environ for name in NATIVE_LOG_VARIABLES)


@pytest.mark.slow
def test_cli_prints_no_third_party_noise_and_verbose_keeps_its_own_output():
    command = [sys.executable, "-m", "splitpack", "cuts", "splitpack.models:digits_cnn", "--input-shape", "1x1x16x16"]
    env = {k: v for k, v in os.environ.items() if k not in NATIVE_LOG_VARIABLES and k != "PYTHONWARNINGS"}
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    verbose = subprocess.run(command + ["--verbose"], capture_output=True, text=True, timeout=300, env=env)
    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert NOISE.findall(quiet.stdout + quiet.stderr) == []
    assert quiet.stdout == verbose.stdout  # the command's own output is the same
    assert "valid cuts of splitpack.models:digits_cnn" in quiet.stdout


def test_forwarded_messages_reach_the_callback_and_the_level_comes_back() -> None:
    project, module = logging.getLogger("splitpack"), logging.getLogger("splitpack.compiler.some_step")
    level = project.level
    project.setLevel(logging.WARNING)
    try:
        lines: list[str] = []
        with forward_messages(lines.append):
            module.info("step %d of %d", 1, 6)
            module.debug("not at INFO")
            logging.getLogger("elsewhere").warning("not splitpack's")
        module.info("after the block")
        assert lines == ["step 1 of 6"]
        assert project.level == logging.WARNING and not any(
            type(h).__name__ == "_CallbackHandler" for h in project.handlers)
    finally:
        project.setLevel(level)


def test_forwarded_messages_stay_with_the_thread_that_logged_them() -> None:
    module = logging.getLogger("splitpack.compiler.some_step")
    seen: dict[str, list[str]] = {"a": [], "b": []}
    both_in = threading.Barrier(2)

    def compile_in_a_thread(name: str) -> None:
        with forward_messages(seen[name].append):
            both_in.wait(timeout=10)
            module.info("from %s", name)
            both_in.wait(timeout=10)

    threads = [threading.Thread(target=compile_in_a_thread, args=(name,)) for name in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert seen == {"a": ["from a"], "b": ["from b"]}

"""An edge server process on loopback: a free port, ``python -m splitpack.serving.edge`` started
and waited for (``GET /health``), and stopped when the block ends. Used by the benchmarks, the
demo and the tests that talk to a real edge process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import httpx

from splitpack.errors import InvalidConfigError

__all__ = ["EdgeProcess", "edge_server", "edge_process", "free_port"]


def free_port(port: int = 0) -> int:
    """A TCP port free on loopback now: ``port`` itself, checked, or one the OS picks (0).

    Raises:
        InvalidConfigError: ``port`` is out of range or in use on 127.0.0.1.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidConfigError(f"port: found {port!r}; expected an integer in 0..65535 "
                                 "(0 lets the system pick a free one)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise InvalidConfigError(f"port {port} on 127.0.0.1 is not free ({error.strerror}); "
                                     "pass another port, or 0 to let the system pick a free "
                                     "one") from None
        return probe.getsockname()[1]


@dataclass(frozen=True)
class EdgeProcess:
    """A running edge server process: its URL, and the standard input of its load clock."""

    url: str
    process: subprocess.Popen

    def start_load_clock(self, wall_s: float) -> None:
        """Start the edge's ``--load-trace`` clock: its trace time is ``--load-start-offset``
        at ``wall_s`` (a :func:`time.time` reading). Needs ``edge_server(load_trace=...)``."""
        if self.process.stdin is None:
            raise InvalidConfigError("start_load_clock: this edge was started without a load "
                                     "trace; pass load_trace= to edge_server")
        self.process.stdin.write(f"start {wall_s:.6f}\n".encode())
        self.process.stdin.flush()


@contextmanager
def edge_process(bundle_path: str | os.PathLike[str], *, max_inflight: int | None = None,
                 threads: int | None = None, start_timeout_s: float = 60.0) -> Iterator[str]:
    """Run ``python -m splitpack.serving.edge`` on a free loopback port until the block ends.

    Args:
        bundle_path: The bundle folder or archive to serve.
        max_inflight: The server's ``--max-inflight``; None for its default.
        threads: The server's ``--threads``; None for its default.
        start_timeout_s: How long to wait for ``GET /health``.

    Yields:
        The server's base URL, ``http://127.0.0.1:PORT``.
    """
    with edge_server(bundle_path, max_inflight=max_inflight, threads=threads,
                     start_timeout_s=start_timeout_s) as edge:
        yield edge.url


@contextmanager
def edge_server(bundle_path: str | os.PathLike[str], *, max_inflight: int | None = None,
                threads: int | None = None, load_trace: str | os.PathLike[str] | None = None,
                load_start_offset_s: float = 0.0, start_timeout_s: float = 60.0,
                port: int = 0) -> Iterator[EdgeProcess]:
    """:func:`edge_process`, optionally with an edge load trace on a clock the caller starts.

    Args:
        bundle_path, max_inflight, threads, start_timeout_s: As in :func:`edge_process`.
        load_trace: The server's ``--load-trace`` (``seconds,slowdown`` rows), its clock on
            standard input (``--load-clock stdin``): until :meth:`EdgeProcess.start_load_clock`,
            the slowdown at ``load_start_offset_s`` holds.
        load_start_offset_s: The server's ``--load-start-offset``.
        port: The loopback port to serve on; 0 for a free one the system picks.

    Yields:
        The running process.

    Raises:
        InvalidConfigError: ``port`` is in use, or the server exits or stays silent at start.
    """
    port = free_port(port)
    command = [sys.executable, "-m", "splitpack.serving.edge", os.fspath(bundle_path),
               "--host", "127.0.0.1", "--port", str(port)]
    if max_inflight is not None:
        command += ["--max-inflight", str(max_inflight)]
    if threads is not None:
        command += ["--threads", str(threads)]
    if load_trace is not None:
        command += ["--load-trace", os.fspath(load_trace), "--load-start-offset",
                    repr(float(load_start_offset_s)), "--load-clock", "stdin"]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log,
                                   stdin=subprocess.PIPE if load_trace is not None else None)
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise InvalidConfigError(f"the edge server exited with status "
                                             f"{process.returncode} before answering: "
                                             f"{log.read().decode(errors='replace')[-1500:]}")
                try:
                    if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise InvalidConfigError(f"the edge server did not answer {url}/health "
                                             f"within {start_timeout_s:g} s")
                time.sleep(0.1)
            yield EdgeProcess(url, process)
        finally:
            if process.stdin is not None:
                process.stdin.close()
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

"""The edge on Ray Serve: a bundle's tails behind the same paths and wire format as ``serve``.

``POST /v1/infer``, ``POST /v1/probe``, ``GET /health``, ``/metadata`` and ``/metrics`` answer
exactly as :mod:`splitpack.serving.edge` does (same checks in the same order, same statuses, same
headers), because the same code answers them
(:func:`~splitpack.serving.edge.handle_request`); so
:class:`~splitpack.runtimes.device.DeviceRuntime` works against either server unchanged.

Design: one ingress in front of one pool of tail replicas.

* ``splitpack-edge`` (:class:`EdgeIngress`, one replica) answers every HTTP request. Its
  :class:`~splitpack.serving.edge.EdgeServer` loads no tails: it authorizes, bounds and
  decodes the body, admits the payload against the manifest, counts, and hands the admitted
  array to the pool.
* ``splitpack-tails`` (:class:`TailPool`, ``replicas`` replicas) holds every tail of the
  bundle in each replica and runs one request's tail; Ray's router sends each call to a
  replica with a short queue.

Why neither Ray's model multiplexing nor one deployment per variant: a device names its
variant inside the binary payload, and Ray's multiplexing routes on a request header
(``serve_multiplexed_model_id``) the device does not send, so the payload must be decoded and
checked before anything can be routed. And the device's choice of variant moves with its
uplink: per-variant deployments would split the replicas across variants and leave some idle,
while a bundle's tails are small enough for every replica to hold them all. Why an ingress
rather than ``replicas`` copies of the whole edge: a scrape of ``/metrics`` reaches one replica,
so with copies each scrape would see a different replica's counters; with one ingress the
counters, the in-flight limit (``max_inflight`` per tail replica) and ``/metadata`` are
complete. The cost is one more in-cluster hop per request (``benchmarks/results/serve.json``
compares the two engines).

Every replica reads the bundle folder from disk, so on a multi-node cluster the folder must
exist at the same path on every node. Ray is an optional dependency
(``pip install 'splitpack[ray]'``), imported only when a function here needs it.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from splitpack.errors import InternalError, InvalidConfigError, SplitpackError
from splitpack.formats.bundle import Bundle, read_bundle
from splitpack.serving.edge import (
    DEFAULT_MAX_BATCH, REMOTE_PROVIDER, EdgeServer, handle_request,
)  # fmt: skip

__all__ = [
    "APP_NAME", "DEFAULT_REPLICAS", "EdgeIngress", "TailPool", "build_app", "ray_edge",
    "serve_ray",
]  # fmt: skip

APP_NAME = "splitpack"
DEFAULT_REPLICAS = 2
DEFAULT_REPLICA_CPUS = 0.5
INGRESS_CPUS = 0.25
# Requests the ingress takes beyond the EdgeServer's limit, so that it can still refuse them
# with 503 (and answer /health) instead of having Ray queue them in front of it.
INGRESS_HEADROOM = 16
_INSTALL_HINT = "install it with: pip install 'splitpack[ray]'"


def _ray_modules() -> tuple[Any, Any]:
    """(ray, ray.serve), or a typed error that says how to install them."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise InvalidConfigError(f"the ray engine needs Ray Serve, which is not importable "
                                 f"({exc}); {_INSTALL_HINT}, or use --engine local") from None
    return ray, serve


class TailPool:
    """One replica of the tail pool: every tail of the bundle, loaded when the replica starts.

    Args:
        bundle_root: The bundle folder (verified again in the replica).
        providers, threads: ONNX Runtime settings of each tail.
    """

    def __init__(self, bundle_root: str, providers: list[str] | None = None,
                 threads: int | None = None) -> None:
        self.server = EdgeServer(read_bundle(bundle_root), providers=providers, threads=threads)

    def run(self, variant_id: str, array: np.ndarray) -> tuple[np.ndarray, float]:
        """The tail of an admitted request: (float32 output, tail compute ms)."""
        return self.server.run_tail(variant_id, array)

    def provider(self) -> str:
        """The ONNX Runtime provider that runs this replica's tails."""
        return self.server.provider


class EdgeIngress:
    """The HTTP front: the edge protocol over an EdgeServer without tails, tails on the pool.

    Args:
        bundle_root: The bundle folder.
        pool: A Ray Serve handle to the :class:`TailPool` deployment.
        token, max_inflight, max_batch: As in :class:`~splitpack.serving.edge.EdgeServer`
            (``max_inflight`` here is for the whole pool).
    """

    def __init__(self, bundle_root: str, pool: Any, *, token: str | None, max_inflight: int,
                 max_batch: int) -> None:
        self.server = EdgeServer(read_bundle(bundle_root), token=token,
                                 max_inflight=max_inflight, max_batch=max_batch, load_tails=False)
        self.pool = pool

    async def run_tail(self, variant_id: str, array: np.ndarray) -> tuple[np.ndarray, float]:
        """Run one tail on a pool replica; a replica that fails is reported as a SplitpackError
        (the request then gets 500 and the device answers it locally)."""
        from ray.exceptions import RayError

        try:
            return await self.pool.run.remote(variant_id, array)
        except SplitpackError:
            raise
        except RayError as exc:
            cause = getattr(exc, "cause", None) or exc
            raise InternalError(f"tail replica failed ({type(cause).__name__}: "
                                f"{str(cause).strip().splitlines()[-1][:300]})") from None

    async def __call__(self, request: Any) -> Any:
        """Ray Serve passes every HTTP request here as a Starlette request."""
        if self.server.provider == REMOTE_PROVIDER and request.url.path in ("/metadata",
                                                                            "/metrics"):
            self.server.provider = await self.pool.provider.remote()
        return await handle_request(self.server, request, self.run_tail)


def _check_count(name: str, value: object, minimum: float, integer: bool) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not (
            math.isfinite(value) and value >= minimum and (integer or value > 0)):
        wanted = f"an int >= {minimum:g}" if integer else "a number > 0"
        raise InvalidConfigError(f"{name}: found {value!r}; expected {wanted}")


def build_app(bundle: Bundle, *, replicas: int = DEFAULT_REPLICAS, token: str | None = None,
              max_inflight: int = 8, max_batch: int = DEFAULT_MAX_BATCH,
              replica_cpus: float = DEFAULT_REPLICA_CPUS, providers: list[str] | None = None,
              threads: int | None = None) -> Any:
    """The Ray Serve application of a bundle (not yet deployed: pass it to ``serve.run``).

    Every setting is checked here, in the driver, so that a bad one is a typed error rather
    than a replica that fails to start.

    Args:
        bundle: A verified bundle folder (:func:`~splitpack.formats.read_bundle`).
        replicas: Tail pool replicas (>= 1).
        token: Bearer token required by ``/v1/infer``, ``/v1/probe``, ``/metadata`` and
            ``/metrics``.
        max_inflight: Requests each tail replica handles at once; the ingress admits
            ``max_inflight * replicas`` and answers more with 503.
        max_batch: Largest batch one payload may carry.
        replica_cpus: Ray CPUs reserved by each tail replica.
        providers, threads: ONNX Runtime settings of each tail.

    Returns:
        A ``ray.serve.Application`` whose ingress is ``splitpack-edge``.
    """
    _, serve = _ray_modules()
    _check_count("replicas", replicas, 1, integer=True)
    _check_count("replica_cpus", replica_cpus, 0, integer=False)
    _check_count("max_inflight", max_inflight, 1, integer=True)
    # The same checks the ingress replica will run, without loading a tail.
    EdgeServer(bundle, token=token, max_inflight=max_inflight * replicas, max_batch=max_batch,
               load_tails=False)
    root = str(bundle.root.resolve())
    quiet = {"enable_access_log": False, "log_level": "WARNING"}
    pool = serve.deployment(
        TailPool, name="splitpack-tails", num_replicas=replicas,
        ray_actor_options={"num_cpus": replica_cpus}, max_ongoing_requests=max_inflight,
        logging_config=quiet,
    ).bind(root, providers, threads)  # fmt: skip
    ingress = serve.deployment(
        EdgeIngress, name="splitpack-edge", num_replicas=1,
        ray_actor_options={"num_cpus": INGRESS_CPUS},
        max_ongoing_requests=max_inflight * replicas + INGRESS_HEADROOM,
        logging_config=quiet,
    )  # fmt: skip
    return ingress.bind(root, pool, token=token, max_inflight=max_inflight * replicas,
                        max_batch=max_batch)


@contextmanager
def ray_edge(bundle_path: str | os.PathLike[str] | Bundle, *, host: str = "127.0.0.1",
             port: int = 8000, replicas: int = DEFAULT_REPLICAS, token: str | None = None,
             max_inflight: int = 8, max_batch: int = DEFAULT_MAX_BATCH,
             replica_cpus: float = DEFAULT_REPLICA_CPUS, num_cpus: int | None = None,
             providers: list[str] | None = None, threads: int | None = None) -> Iterator[str]:
    """Serve a bundle with Ray Serve for the duration of a ``with`` block.

    Without a running Ray connection this starts a local cluster on loopback
    (``ray.init(address="local", _node_ip_address="127.0.0.1")``, no dashboard) and stops it on
    exit; with one (``ray.init`` called before) it deploys there and leaves Ray running. Either
    way Serve is shut down on exit. Ray's usage statistics stay off unless
    ``RAY_USAGE_STATS_ENABLED`` says otherwise: a local edge does not report to anyone.

    Args:
        bundle_path: A bundle folder or archive, or a :class:`Bundle`.
        host, port: Where Serve's HTTP proxy listens.
        num_cpus: CPUs of a cluster started here; default this machine's count, at least what
            the deployments reserve.
        replicas, token, max_inflight, max_batch, replica_cpus, providers, threads: As in
            :func:`build_app`.

    Yields:
        The base URL, e.g. ``http://127.0.0.1:8000``, once every replica is running.
    """
    ray, serve = _ray_modules()
    bundle = bundle_path if isinstance(bundle_path, Bundle) else read_bundle(bundle_path)
    app = build_app(bundle, replicas=replicas, token=token, max_inflight=max_inflight,
                    max_batch=max_batch, replica_cpus=replica_cpus, providers=providers,
                    threads=threads)
    owns_cluster = not ray.is_initialized()
    if owns_cluster:
        needed = math.ceil(replicas * replica_cpus + INGRESS_CPUS)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        in_main_thread = threading.current_thread() is threading.main_thread()
        handlers = ({sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
                    if in_main_thread else {})
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                 num_cpus=num_cpus or max(os.cpu_count() or 1, needed), log_to_driver=False,
                 logging_level="warning")
        # ray.init makes SIGTERM abort the driver, which leaves Ray's agent processes running;
        # the caller's handlers (serve_ray's unwind through the finally below) stay.
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    try:
        serve.start(http_options={"host": host, "port": port},
                    logging_config={"enable_access_log": False, "log_level": "WARNING"})
        serve.run(app, name=APP_NAME, route_prefix="/")
        yield f"http://{host}:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            if owns_cluster:
                ray.shutdown()


def serve_ray(bundle_path: str | os.PathLike[str] | Bundle, host: str = "127.0.0.1",
              port: int = 8000, replicas: int = DEFAULT_REPLICAS, token: str | None = None,
              max_inflight: int = 8, max_batch: int = DEFAULT_MAX_BATCH,
              threads: int | None = None) -> None:
    """Serve a bundle on a local Ray cluster until Ctrl-C or SIGTERM, then stop it.

    Args:
        bundle_path: A bundle folder or archive, or a :class:`Bundle`.
        host, port: Where to listen (loopback unless told otherwise).
        replicas, token, max_inflight, max_batch, threads: As in :func:`build_app`.
    """
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through ray_edge, which shuts Serve and Ray down

    # SIGINT too, explicitly: a process started in the background by a non-interactive shell
    # inherits SIGINT ignored, and Python then leaves it ignored, so Ctrl-C (or a supervisor's
    # SIGINT) would never stop the server; the test suite run with `make test &` hung on this.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with ray_edge(bundle_path, host=host, port=port, replicas=replicas, token=token,
                      max_inflight=max_inflight, max_batch=max_batch, threads=threads) as url:
            print(f"splitpack edge (ray serve, {replicas} tail replicas): serving at {url}; "
                  "Ctrl-C to stop", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":  # the CLI's `serve`, this engine (the import runs only as a script)
    from splitpack.cli import run_as

    run_as(["serve", "--engine", "ray"])

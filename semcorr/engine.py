"""Where the parallel steps run: in this process (`local`, the default) or on a Ray cluster (`ray`).

The steps hand over a pure function (or an actor class) and their work items; the engine
gives the results back in item order, so the caller assembles and writes the same bytes
whichever engine ran them. Ray does the scheduling, the retries of tasks whose worker
died (`max_retries`) and the restarts of dead actors (`max_restarts`, `max_task_retries`);
semcorr has no queue or pool of its own. Ray is imported only when `--engine ray` is used
(`pip install 'semcorr[ray]'`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from semcorr.errors import SemcorrError

ENGINES = ("local", "ray")
RETRIES = 3  # attempts Ray makes again after a worker or actor process died
CONNECT_TIMEOUT_S = 5.0
FAULT_DIR_ENV = "SEMCORR_ENGINE_FAULT_DIR"  # tests: a worker finding `armed` there renames it and dies once

Progress = Callable[[int], None] | None


@dataclass(frozen=True)
class Engine:
    """How to run the parallel steps.

    Attributes:
        kind: "local" (this process) or "ray".
        address: an existing Ray cluster (`host:port`, `ray://host:port` or `auto`); None
            starts a local Ray instance with this machine's cores.
        num_cpus: cores of a local Ray instance (None: all of them).
    """

    kind: str = "local"
    address: str | None = None
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ENGINES:
            raise SemcorrError(f"--engine {self.kind!r}: use local or ray")
        if self.address is not None and self.kind != "ray":
            raise SemcorrError(f"--address {self.address}: only used with --engine ray")


LOCAL = Engine()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SemcorrError("--engine ray needs Ray: pip install 'semcorr[ray]' (or run with --engine local)") from None
    return ray


def address_problem(address: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why nothing answers at a Ray `host:port` address within `timeout` seconds, or None."""
    if address == "auto":
        return None
    text = address.removeprefix("ray://")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        return "expected host:port, ray://host:port or auto"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return f"no Ray cluster answers at {host}:{port} ({exc.strerror or type(exc).__name__})"


def auth_hint(address: str | None) -> str:
    """What to try when a cluster at an explicit `address` refused us: a `ray start --head` of recent Ray
    turns on token authentication, which a client given an address uses only with RAY_AUTH_MODE=token."""
    if not address or address == "auto" or os.environ.get("RAY_AUTH_MODE"):
        return ""
    return ("; if the cluster uses token authentication (the default of `ray start --head` in recent Ray), "
            "set RAY_AUTH_MODE=token (token from ~/.ray/auth_token or RAY_AUTH_TOKEN) or use --address auto on its "
            "head node")


@contextlib.contextmanager
def ray_session(engine: Engine) -> Iterator[Any]:
    """The `ray` module, connected: to `engine.address`, to an already started Ray, or to a new local one."""
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    if engine.address:
        problem = address_problem(engine.address)
        if problem:
            raise SemcorrError(f"--address {engine.address}: {problem}; start a cluster with `ray start --head` "
                               "or leave out --address to run Ray on this machine")
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if engine.address:
        options["address"] = engine.address
    else:  # "local": a new instance here, even where `ray start` left a cluster running (RAY_ADDRESS too)
        options.update(address="local", num_cpus=engine.num_cpus or os.cpu_count() or 1)
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SemcorrError(f"--address {engine.address or '(local)'}: Ray did not start or connect "
                           f"({' '.join(str(exc).split())[:160]}){auth_hint(engine.address)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def fault_point() -> None:
    """Test hook: the first worker to find `armed` in $SEMCORR_ENGINE_FAULT_DIR takes it and dies."""
    folder = os.environ.get(FAULT_DIR_ENV)
    if not folder:
        return
    try:
        os.rename(os.path.join(folder, "armed"), os.path.join(folder, "fired"))
    except OSError:
        return
    os._exit(1)


def _run_chunk(func: Callable[[list], list], chunk: list) -> list:
    fault_point()
    return func(chunk)


def chunks(items: Sequence, size: int) -> list[list]:
    """`items` cut into consecutive lists of at most `size`."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def map_chunks(engine: Engine, func: Callable[[list], list], items: Sequence, chunk_size: int = 2000,
               progress: Progress = None) -> list:
    """`func` over consecutive chunks of `items`, results concatenated in item order.

    `func` maps a list of items to a list of results of the same length; on Ray each chunk
    is one task (retried when its worker dies), fed back to `progress` as chunks finish.
    """
    parts = chunks(items, chunk_size)
    if engine.kind == "local":
        out: list = []
        for chunk in parts:
            out.extend(func(chunk))
            if progress is not None:
                progress(len(chunk))
        return out
    with ray_session(engine) as ray:
        task = ray.remote(max_retries=RETRIES, retry_exceptions=False)(_run_chunk)
        func_ref = ray.put(func)
        refs = [task.remote(func_ref, chunk) for chunk in parts]
        sizes = {ref: len(chunk) for ref, chunk in zip(refs, parts)}
        pending = list(refs)
        with raised_as_semcorr(ray):
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                if progress is not None:
                    progress(sizes[done[0]])
            results = ray.get(refs)
    return [result for part in results for result in part]


class _ActorShell:
    """Wraps a worker class so each call passes the fault point first."""

    def __init__(self, cls: type, args: tuple) -> None:
        self.worker = cls(*args)

    def call(self, method: str, item: Any) -> Any:
        fault_point()
        return getattr(self.worker, method)(item)


def iter_actors(engine: Engine, cls: type, args: tuple, method: str, items: Sequence, progress: Progress = None,
                actors: int | None = None) -> Iterator[Any]:
    """Yield `cls(*args).method(item)` for every item, in item order (a generator: the caller writes as results come).

    Local: one instance in this process. Ray: one instance per actor (one per CPU of the
    cluster unless `actors`), fed by Ray's ActorPool; a dead actor is restarted and its
    call retried by Ray. A `close()` of the class is called on the local instance at the end.
    """
    if engine.kind == "local":
        worker = cls(*args)
        try:
            for item in items:
                yield getattr(worker, method)(item)
                if progress is not None:
                    progress(1)
        finally:
            getattr(worker, "close", lambda: None)()
        return
    with ray_session(engine) as ray, raised_as_semcorr(ray):
        from ray.util import ActorPool

        count = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        shell = ray.remote(num_cpus=1, max_restarts=RETRIES, max_task_retries=RETRIES)(_ActorShell)
        pool = ActorPool([shell.remote(cls, args) for _ in range(min(count, max(1, len(items))))])
        for result in pool.map(lambda actor, item: actor.call.remote(method, item), list(items)):
            yield result
            if progress is not None:
                progress(1)


def semcorr_cause(exc: BaseException | None) -> SemcorrError | None:
    """The SemcorrError somewhere in `exc`'s chain of causes (Ray Core and Ray Data wrap it), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        wrapped = getattr(exc, "cause", None)  # a RayTaskError is also an instance of its cause's class
        if isinstance(wrapped, BaseException):
            exc = wrapped
        elif isinstance(exc, SemcorrError):
            return exc
        else:
            exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def raised_as_semcorr(ray) -> Iterator[None]:
    """A SemcorrError raised inside a Ray task, actor or Ray Data function comes out as itself (one
    clear line), not wrapped; an actor that died more than RETRIES times is one line too."""
    try:
        yield
    except ray.exceptions.RayActorError as exc:
        raise SemcorrError(f"a Ray worker failed {RETRIES + 1} times ({' '.join(str(exc).split())[:200]})") from None
    except Exception as exc:
        cause = semcorr_cause(exc)
        if cause is None or cause is exc:
            raise
        raise SemcorrError(str(cause)) from None

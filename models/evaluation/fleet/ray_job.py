"""The Ray Data pipeline of ``roadseg fleet eval`` (needs ``pip install 'roadseg[fleet]'``).

::

    from_items(work units) --map_batches(decode_units), tasks--> frames (image bytes + labelIds)
        --map_batches(SegmentActor), actor pool: one model per actor, num_gpus per actor--> result rows
        --iter_rows on the driver--> FleetAggregate (per drive and overall, each frame once)

Decoding runs in Ray tasks on the cluster's CPUs, next to the actors; a video is one task (its
frames decode in order), image drives are cut into units of a few frames. The actors are Ray Data's
actor pool, with ``max_restarts`` / ``max_task_retries``: a worker that dies mid-run is restarted and
the batches it held are run again, and the driver counts each (drive, frame) once.

Without ``address``, a Ray instance is started on this machine for the run and stopped after it
(the "embedded" cluster: the same command on a laptop); with one (``auto``, ``ray://HOST:PORT``,
``HOST:PORT``), the run joins that cluster and only disconnects.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.evaluation.fleet.aggregate import FleetAggregate
from models.evaluation.fleet.drives import Drive
from models.evaluation.fleet.worker import SegmentActor, decode_units, work_units
from models.evaluation.progress import progress as progress_reporter

log = logging.getLogger(__name__)

INSTALL_HINT = "roadseg fleet needs Ray: pip install 'roadseg[fleet]'"
DEFAULT_DECODE_CPUS = 0.5  # per decode task, when the actors leave that much of the cluster free
ACTOR_MAX_RESTARTS = 4  # a worker lost this many times per actor fails the run (a frame that kills it)
ACTOR_MAX_TASK_RETRIES = 4
TARGET_BLOCK_BYTES = 32 * 2**20  # a few full-size frames per block: frames flow to the actors early


def ray_installed() -> bool:
    """Whether Ray Data can be imported, without importing it (``roadseg fleet eval`` checks first)."""
    try:
        # Ray Data's own dependencies come with ray[data]: pyarrow stands for them (no submodule lookup,
        # which would import ray itself).
        return all(importlib.util.find_spec(name) is not None for name in ("ray", "pyarrow"))
    except (ImportError, ValueError):  # a parent that is not a package, or sys.modules["ray"] = None
        return False


class FleetError(RuntimeError):
    """The run as a whole could not be done (no cluster, a cluster too small, Ray missing)."""


def import_ray(address: str | None = None) -> Any:
    """Ray and Ray Data; FleetError with the install hint when they are missing."""
    if address is not None and address.startswith("ray://"):
        _client_token()  # read when Ray is first imported
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise FleetError(INSTALL_HINT) from exc
    return ray


@dataclass(frozen=True)
class FleetConfig:
    model: str
    backend: str = "torch"
    device: str = "auto"
    precision: str = "auto"
    size: tuple[int, int] | None = None
    batch: int = 1
    address: str | None = None  # None: an embedded Ray instance on this machine
    actors: int | None = None  # None: as many as the cluster's GPUs (else CPUs) allow
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs and --device is not cpu
    decode_cpus: float = DEFAULT_DECODE_CPUS
    decode_tasks: int | None = None  # decode tasks at once (None: 2 per actor)
    masks: str | None = None
    panels: int = 4
    road: bool = True
    num_cpus: int | None = None  # the embedded instance's CPUs (None: this machine's)
    object_store_mb: int | None = None  # the embedded instance's object store (None: Ray's default)


@dataclass(frozen=True)
class Plan:
    """How the run uses the cluster."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads: int  # torch threads per actor
    device: str
    decode_cpus: float
    decode_tasks: int
    cluster: dict[str, float]
    nodes: int


def plan(config: FleetConfig, resources: dict[str, float], nodes: int) -> Plan:
    """Actors and their resources on a cluster with ``resources``; FleetError when they cannot fit."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    gpus_per_actor = config.gpus_per_actor
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus >= 1 and config.device != "cpu" else 0.0
    if gpus_per_actor > 0 and config.device == "cpu":
        raise FleetError("--gpus-per-actor with --device cpu: the GPUs would sit idle")
    if gpus_per_actor > gpus:
        raise FleetError(f"--gpus-per-actor {gpus_per_actor:g}: the cluster has {gpus:g} GPUs")
    if config.cpus_per_actor <= 0:
        raise FleetError("--cpus-per-actor must be > 0")
    actors = config.actors
    if actors is None:
        actors = int(gpus // gpus_per_actor) if gpus_per_actor > 0 else int(cpus // config.cpus_per_actor)
        actors = max(1, actors)
    if actors * config.cpus_per_actor > cpus + 1e-9:
        raise FleetError(f"{actors} actors x {config.cpus_per_actor:g} CPUs need {actors * config.cpus_per_actor:g} "
                         f"CPUs; the cluster has {cpus:g} (fewer --actors or --cpus-per-actor)")
    if gpus_per_actor > 0 and actors * gpus_per_actor > gpus + 1e-9:
        raise FleetError(f"{actors} actors x {gpus_per_actor:g} GPUs need more than the cluster's {gpus:g} GPUs")
    decode_tasks = config.decode_tasks or max(2, 2 * actors)
    spare = cpus - actors * config.cpus_per_actor
    # Decode tasks reserve CPUs the actors leave free; on a machine the actors fill (a laptop), they
    # reserve none and share the actors' cores (the OS schedules them; their number stays capped).
    decode_cpus = config.decode_cpus if spare >= config.decode_cpus else 0.0
    device = config.device
    if gpus_per_actor == 0 and device == "auto":
        device = "cpu"  # an actor without a GPU of its own must not pick one up by itself
    return Plan(actors, config.cpus_per_actor, gpus_per_actor, max(1, round(config.cpus_per_actor)), device,
                decode_cpus, decode_tasks, {k: float(v) for k, v in resources.items() if k in ("CPU", "GPU")},
                nodes)


@dataclass
class FleetRun:
    """What the run measured, before it is written (see :mod:`models.evaluation.fleet.report`)."""

    config: FleetConfig
    plan: Plan
    drives: list[Drive]
    aggregate: FleetAggregate
    model_id: str
    card_input_size: tuple[int, int]
    input_size: tuple[int, int]
    started_at: float  # wall clock (time.time) when the dataset started
    elapsed_s: float  # dataset start to the last row
    ray_version: str
    address: str  # "embedded" or what was given


def model_payload(spec: str) -> tuple[bytes | None, str, Any]:
    """(checkpoint bytes or None for an ``smp:`` spec, its file name, its card); CheckpointError when unusable."""
    from models.store.checkpoint import InputSpec, ModelCard, read_card
    from models.store.names import UNTRAINED_PREFIX, checkpoint_for

    if spec.startswith(UNTRAINED_PREFIX):
        return None, spec, ModelCard(model_id=spec, family="smp", arguments={}, input=InputSpec())
    path = checkpoint_for(spec)
    card = read_card(path)  # CheckpointError: missing, corrupt or not a roadseg checkpoint
    return path.read_bytes(), path.name, card


def check_masks_dest(dest: str) -> None:
    """Fail before the run when the masks cannot be written (a probe file is written and removed)."""
    from models.evaluation.fleet.worker import MaskWriter

    writer = MaskWriter(dest)
    probe = f".probe-{os.getpid()}"
    try:
        import numpy as np

        writer.write(".roadseg-fleet", probe, np.zeros((1, 1), np.uint8))
    except Exception as exc:
        raise FleetError(f"--masks {dest}: cannot write there: {exc}") from exc
    if writer._fs is None:
        folder = Path(dest) / ".roadseg-fleet"
        (folder / f"{probe}.png").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()
    else:
        with contextlib.suppress(Exception):
            writer._fs.delete_dir(f"{writer._root.rstrip('/')}/.roadseg-fleet")


def _client_token() -> None:
    """Ray (2.5x) guards clusters with a token, which a ray:// client sends only in token mode: turn
    it on where a token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), as a
    direct connection does; an explicit RAY_AUTH_MODE is left alone."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or Path(path).is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


@contextlib.contextmanager
def connect(config: FleetConfig, verbose: bool = False) -> Iterator[tuple[Any, str]]:
    """Ray, initialised: an embedded instance (``address`` None, stopped afterwards) or the given cluster."""
    ray = import_ray(config.address)
    quiet = not verbose
    if quiet:
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose,
                              "logging_level": logging.INFO if verbose else logging.WARNING}
    if config.address is None:
        kwargs: dict[str, Any] = {"address": "local", "num_cpus": config.num_cpus or os.cpu_count() or 1}
        if config.object_store_mb:
            kwargs["object_store_memory"] = int(config.object_store_mb) * 2**20
        where = "embedded"
    else:
        kwargs = {"address": config.address}
        where = config.address
        if config.address.startswith("ray://"):
            common.pop("include_dashboard")  # a Ray Client connection takes no such option
    try:
        ray.init(**kwargs, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        what = "start Ray here" if config.address is None else f"reach the Ray cluster at {where}"
        raise FleetError(f"cannot {what}: {exc}") from exc
    try:
        yield ray, where
    finally:
        ray.shutdown()


def run_fleet(config: FleetConfig, drives: list[Drive], *, progress: bool = True, verbose: bool = False,
              on_row: Callable[[dict[str, Any]], None] | None = None,
              driver_on_cluster: bool | None = None) -> FleetRun:
    """Evaluate ``drives`` on Ray; ``on_row`` sees every result row as it arrives (tests use it).
    ``driver_on_cluster``: drive the dataset from an actor on the cluster (None: only through a
    ray:// client, which cannot drive Ray Data itself)."""
    import_ray(config.address)  # before the checkpoint is read: the hint comes first
    checkpoint, checkpoint_name, card = model_payload(config.model)
    if config.size is not None:
        problem = card.input.size_problem(*config.size)
        if problem:
            raise ValueError(f"--size: model {card.model_id}: {problem}")
    if config.masks:
        check_masks_dest(config.masks)
    with connect(config, verbose) as (ray, where):
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        run_plan = plan(config, ray.cluster_resources(), nodes)
        log.info("fleet: %d drives on %s (%d nodes, %s); %d actors x %g CPU / %g GPU, decode tasks %g CPU",
                 len(drives), where, nodes, run_plan.cluster, run_plan.actors, run_plan.cpus_per_actor,
                 run_plan.gpus_per_actor, run_plan.decode_cpus)
        total = max(1, sum(drive.expected or 0 for drive in drives if drive.error is None))
        with progress_reporter(total, progress, label="fleet") as bar:
            tick = bar.update if bar is not None else None
            if driver_on_cluster or (driver_on_cluster is None and _client_mode(ray)):
                if on_row is not None:
                    raise ValueError("on_row needs the dataset driven from this process, not from the cluster")
                aggregate, started_at, elapsed = _execute_on_cluster(ray, config, run_plan, drives, checkpoint,
                                                                     checkpoint_name, tick)
            else:
                aggregate, started_at, elapsed = execute(ray, config, run_plan, drives, checkpoint, checkpoint_name,
                                                         on_frame=tick, on_row=on_row)
        ray_version = str(ray.__version__)
    width, height = config.size or card.input.size
    return FleetRun(config, run_plan, drives, aggregate, card.model_id,
                    (int(card.input.size[0]), int(card.input.size[1])), (int(width), int(height)),
                    started_at, elapsed, ray_version, where)


def execute(ray: Any, config: FleetConfig, run_plan: Plan, drives: list[Drive], checkpoint: bytes | None,
            checkpoint_name: str, *, on_frame: Callable[[int], Any] | None = None,
            on_row: Callable[[dict[str, Any]], None] | None = None) -> tuple[FleetAggregate, float, float]:
    """Run the dataset from a driver on the cluster: (aggregate, wall-clock start, seconds to the last row).
    ``on_frame(1)`` for each new frame done, ``on_row(row)`` for every row."""
    aggregate = FleetAggregate(drives, config.panels)
    units = work_units(drives)
    started_at = time.time()
    start = time.monotonic()
    if units:
        dataset = _dataset(ray, config, run_plan, units, checkpoint, checkpoint_name, [d.name for d in drives])
        try:
            for row in dataset.iter_rows():
                fresh = aggregate.add(row)
                if on_frame is not None and fresh and not row["error"]:
                    on_frame(1)
                if on_row is not None:
                    on_row(row)
        except Exception as exc:
            if type(exc).__module__.split(".")[0] != "ray":
                raise
            # Actors that cannot start (a model that will not load there), a worker lost more
            # often than the retries allow: the run as a whole failed.
            raise FleetError(f"the Ray job failed: {exc}") from exc
    return aggregate, started_at, time.monotonic() - start


def _client_mode(ray: Any) -> bool:
    """Connected through Ray Client (ray://): Ray Data cannot execute from such a driver."""
    try:
        return bool(ray.util.client.ray.is_connected())
    except AttributeError:
        return False


class RemoteDriver:
    """:func:`execute` in an actor on the cluster, for a ``ray://`` client: Ray Data runs from a driver on the
    cluster, the client polls :meth:`frames_done` for its progress line and receives the aggregate."""

    def __init__(self) -> None:
        self.done = 0

    def _tick(self, count: int) -> None:
        self.done += count

    def run(self, config: FleetConfig, run_plan: Plan, drives: list[Drive], checkpoint: bytes | None,
            checkpoint_name: str) -> tuple[FleetAggregate, float, float]:
        import ray

        return execute(ray, config, run_plan, drives, checkpoint, checkpoint_name, on_frame=self._tick)

    def frames_done(self) -> int:
        return self.done


def _execute_on_cluster(ray: Any, config: FleetConfig, run_plan: Plan, drives: list[Drive], checkpoint: bytes | None,
                        checkpoint_name: str, tick: Callable[[int], Any] | None) -> tuple[FleetAggregate, float, float]:
    driver = ray.remote(num_cpus=0, max_concurrency=2)(RemoteDriver).remote()
    try:
        result = driver.run.remote(config, run_plan, drives, checkpoint, checkpoint_name)
        reported = 0
        while True:
            ready, _ = ray.wait([result], timeout=1.0)
            done = int(ray.get(driver.frames_done.remote()))
            if tick is not None and done > reported:
                tick(done - reported)
            reported = done
            if ready:
                try:
                    return ray.get(result)  # type: ignore[no-any-return]
                except Exception as exc:  # a RayTaskError wrapping FleetError or Ray's own
                    cause = getattr(exc, "cause", None) or exc
                    raise FleetError(str(cause)) from exc
    finally:
        ray.kill(driver)


def _dataset(ray: Any, config: FleetConfig, run_plan: Plan, units: list[dict[str, str]], checkpoint: bytes | None,
             checkpoint_name: str, drive_names: list[str]) -> Any:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.target_max_block_size = TARGET_BLOCK_BYTES
    if hasattr(context, "print_on_execution_start"):
        context.print_on_execution_start = False
    frames = ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
        decode_units, batch_size=1, batch_format="numpy", num_cpus=run_plan.decode_cpus,
        compute=ray.data.TaskPoolStrategy(size=max(1, min(run_plan.decode_tasks, len(units)))))
    actors: dict[str, Any] = {
        "fn_constructor_kwargs": {
            "model_spec": config.model, "checkpoint": checkpoint, "checkpoint_name": checkpoint_name,
            "backend": config.backend, "device": run_plan.device, "precision": config.precision,
            "size": config.size, "batch": config.batch, "threads": run_plan.threads, "drive_names": drive_names,
            "masks": config.masks, "panels": config.panels, "road": config.road,
        },
        "batch_size": config.batch, "batch_format": "numpy",
        "compute": ray.data.ActorPoolStrategy(size=run_plan.actors),
        "num_cpus": run_plan.cpus_per_actor, "num_gpus": run_plan.gpus_per_actor or None,
    }
    with warnings.catch_warnings():
        # max_restarts / max_task_retries travel as "ray_remote_args", deprecated since Ray 2.60 (the
        # named parameters do not include them yet). A Ray without them keeps its own defaults: actors
        # restarted and their tasks retried without limit.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        try:
            return frames.map_batches(SegmentActor, **actors, max_restarts=ACTOR_MAX_RESTARTS,
                                      max_task_retries=ACTOR_MAX_TASK_RETRIES)
        except TypeError:
            return frames.map_batches(SegmentActor, **actors)

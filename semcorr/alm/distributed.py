"""`alm predict` on an engine: here in chunks, or on Ray Data (`map_batches` over an actor pool).

Every engine cuts the instances into consecutive chunks of at most `PREDICT_CHUNK`, a multiple of
`predict`'s batch size (so each network batch holds the same crops whichever engine ran it), and
`alm.train.predict` runs on each chunk; the predictions come back keyed by instance id, so the
file written is byte-identical. On Ray each actor loads the checkpoint once and runs as many torch
threads as the driver would (torch's CPU arithmetic depends on the thread count: 1 or 3 threads move
some coordinates by 1e-5 pixel against 2, enough to flip a written third decimal), holding that many
cores, or one GPU per actor when the cluster has GPUs; a dead actor is restarted and its chunk
retried by Ray Data. A chunk travels as a small store of its own instances and their images' records;
the workers read the pixels and the checkpoint at the paths the driver sees (on a cluster of several
machines: a filesystem every node mounts at the same path).
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from semcorr.engine import Engine, Progress, chunks, fault_point, raised_as_semcorr, ray_session
from semcorr.store import Dataset, Instance

PREDICT_BATCH = 32  # `alm.train.predict`'s default batch size
PREDICT_CHUNK = 8 * PREDICT_BATCH  # instances per work item (one Ray Data row)


def chunk_store(dataset: Dataset, members: Sequence[Instance]) -> Dataset:
    """A store holding only `members`, their images' records and every category, its image root absolute."""
    wanted = {inst.image_id for inst in members}
    return replace(dataset, images={k: v for k, v in dataset.images.items() if k in wanted},
                   instances=list(members), image_root=Path(dataset.image_root).resolve())


class ChunkPredictor:
    """Ray Data callable: loads the ALM once per actor, predicts each row's chunk (a pickled `chunk_store`)."""

    def __init__(self, checkpoint: str, threshold: float, threads: int) -> None:
        import torch

        from semcorr.alm.train import load_checkpoint

        torch.set_num_threads(threads)  # the driver's count (the same arithmetic), on the cores Ray gave the actor
        self.alm, self.threshold = load_checkpoint(Path(checkpoint)), threshold

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from semcorr.alm.train import predict

        fault_point()
        results = []
        for payload in batch["payload"]:
            store = pickle.loads(payload)
            found = predict(self.alm, store, store.instances, threshold=self.threshold, keep_device=True)
            results.append(pickle.dumps(found, protocol=pickle.HIGHEST_PROTOCOL))
        return {"chunk": np.asarray(batch["chunk"]), "result": np.array(results, dtype=object)}


def quiet_ray_data(data) -> None:
    """No Ray Data progress bars or execution notes on the console (semcorr draws its own bar)."""
    context = data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def spread_chunk(count: int, actors: int, largest: int) -> int:
    """Instances per chunk: at most `largest`, small enough that every actor gets one, a multiple of the batch."""
    even = math.ceil(math.ceil(count / max(1, actors)) / PREDICT_BATCH) * PREDICT_BATCH
    return max(PREDICT_BATCH, min(largest, even))


def actor_plan(nodes: list[dict], threads: int, chunk_count: int) -> tuple[dict[str, float], int]:
    """(Ray resources per actor, actor count) on the alive `nodes` (`ray.nodes()`): one GPU each when
    the cluster has GPUs, else `threads` cores each (at most a node's cores), as many as fit."""
    alive = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
    gpus = sum(int(r.get("GPU", 0)) for r in alive)
    if gpus:
        return {"num_gpus": 1, "num_cpus": 1}, max(1, min(gpus, chunk_count))
    cores = [int(r.get("CPU", 0)) for r in alive] or [1]
    per_actor = max(1, min(threads, max(cores)))
    fit = sum(c // per_actor for c in cores)
    return {"num_cpus": per_actor, "num_gpus": 0}, max(1, min(fit, chunk_count))


def predict_instances(engine: Engine, checkpoint: Path, dataset: Dataset, members: Sequence[Instance],
                      threshold: float, progress: Progress = None, chunk_size: int = PREDICT_CHUNK,
                      threads: int | None = None) -> dict[int, np.ndarray]:
    """Instance id -> (K, 5) predictions (`alm.train.predict`) of `members`, the same on every engine.

    The checkpoint is loaded here first on every engine, so a bad one is one clear error
    before any cluster work; `progress(n)` is fed as chunks finish. On Ray the chunks shrink
    below `chunk_size` until every actor has one (`spread_chunk`). `threads`: torch threads per
    Ray actor (default: this process's count, which keeps the bytes those of local).
    """
    import torch

    from semcorr.alm.train import load_checkpoint, predict

    if chunk_size % PREDICT_BATCH:
        raise ValueError(f"chunk_size {chunk_size} must be a multiple of {PREDICT_BATCH}")
    alm = load_checkpoint(checkpoint)
    parts = chunks(members, chunk_size)
    out: dict[int, np.ndarray] = {}
    if engine.kind == "local" or not members:
        for part in parts:
            out.update(predict(alm, dataset, part, threshold=threshold, keep_device=True))
            if progress is not None:
                progress(len(part))
        return out
    del alm
    with ray_session(engine) as ray, raised_as_semcorr(ray):
        import ray.data

        quiet_ray_data(ray.data)
        threads = threads or torch.get_num_threads()
        per_actor, actors = actor_plan(ray.nodes(), threads, math.ceil(len(members) / PREDICT_BATCH))
        parts = chunks(members, spread_chunk(len(members), actors, chunk_size))
        rows = [{"chunk": i, "payload": pickle.dumps(chunk_store(dataset, part), protocol=pickle.HIGHEST_PROTOCOL)}
                for i, part in enumerate(parts)]
        frame = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
        pool = ray.data.ActorPoolStrategy(size=min(actors, len(rows)))
        done = frame.map_batches(  # Ray Data restarts a dead actor and retries its batch (its defaults)
            ChunkPredictor, batch_size=1, batch_format="numpy", compute=pool,
            fn_constructor_kwargs={"checkpoint": str(Path(checkpoint).resolve()), "threshold": float(threshold),
                                   "threads": threads}, **per_actor)
        results: dict[int, bytes] = {}
        for row in done.iter_rows():
            results[int(row["chunk"])] = row["result"]
            if progress is not None:
                progress(len(parts[int(row["chunk"])]))
    for i in range(len(parts)):
        out.update(pickle.loads(results[i]))
    return out

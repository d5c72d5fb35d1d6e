"""The ALM as a Label Studio ML backend (FastAPI): health, setup, predict, and training on webhooks.

Label Studio's ML backend protocol (as `label-studio-ml`'s `api.py` serves it and Label Studio
1.23's `ml/api_connector.py` calls it): `GET /health` answers `{"status": "UP"}`; `POST /setup`
(project, schema) answers the `model_version`; `POST /predict` (tasks, project, label_config)
answers `{"results": [one prediction per task], "model_version"}`; `POST /webhook` with
`action` START_TRAINING (or ANNOTATION_CREATED / ANNOTATION_UPDATED) starts training, as does
`POST /train` (Label Studio's older training call).

A task's prediction is `review.task_prediction`, the one `review push` sends: the backend
serving the round N ALM answers what `review push --round N+1` would have pushed. Training runs
`alm train` for round N+1 (warm-started from round N) in a background thread on the store's
labels (what `review pull` merged); once written, the next predictions come from it. Problems
(an image that cannot be read, a category the checkpoint does not know, a checkpoint trained
on other data) are answered as one line in `error` and logged; the backend keeps serving.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from semcorr.errors import SemcorrError

log = logging.getLogger("semcorr.backend")
TRAIN_EVENTS = ("START_TRAINING", "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
_CHECKPOINT = re.compile(r"^alm_round(\d+)\.pt$")


def latest_round(root: Path) -> int | None:
    """The highest N with `annotation/alm_round<N>.pt` in the dataset directory (None when there is none)."""
    rounds = [int(m[1]) for p in (Path(root) / "annotation").glob("alm_round*.pt") if (m := _CHECKPOINT.match(p.name))]
    return max(rounds) if rounds else None


def check_checkpoint(alm, training_hash: str, path: Path) -> None:
    """Refuse a checkpoint not trained on this store's current training instances (its data hash).

    Raises:
        SemcorrError: naming the checkpoint and what to do (train the round, or send a training event).
    """
    if alm.data_hash != training_hash:
        raise SemcorrError(f"{path}: trained on other data than this dataset's labelled instances (data hash "
                           f"{alm.data_hash[:12]} != {training_hash[:12]}): a checkpoint of another dataset, or "
                           "labels changed since; run `semcorr alm train` or start training from Label Studio")


def task_category(dataset, label_config: str | None):
    """The category whose labelling config (`review.labeling_config`) the project uses."""
    from semcorr.annotation.review import labeling_config

    for category in dataset.categories.values():
        if category.num_keypoints and labeling_config(category) == label_config:
            return category
    raise SemcorrError("the project's labelling config is not one semcorr made for a category of this dataset; "
                       "push the tasks with `semcorr review push`")


@dataclass
class Backend:
    """The state one backend process serves: the dataset and the current round's ALM."""

    root: Path
    train_options: object = None
    alm: object = field(default=None, repr=False)
    round: int | None = None
    problem: str | None = None
    training: bool = False
    last_training: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _dataset: tuple = field(default=(None, None), repr=False)  # (annotations.json mtime and size, store)

    def dataset(self):
        """The store, read again only when `annotations.json` changed (a `review pull`, a training)."""
        from semcorr import store

        try:
            stat = (Path(self.root) / store.ANNOTATIONS_FILE).stat()
            key = (stat.st_mtime_ns, stat.st_size)
        except OSError:  # no store there: `load_dataset` says so in one line
            key = None
        with self._lock:
            seen, dataset = self._dataset
        if key is None or seen != key:
            dataset = store.load_dataset(self.root)
            with self._lock:
                self._dataset = (key, dataset)
        return dataset

    def load(self) -> None:
        """(Re)load the latest checkpoint; a problem is kept in `problem` (answered, never raised)."""
        from semcorr import commands
        from semcorr.alm.data import data_hash
        from semcorr.alm.train import load_checkpoint

        try:
            number = latest_round(self.root)
            if number is None:
                raise SemcorrError(f"{self.root}: no ALM checkpoint (annotation/alm_round<N>.pt); run `semcorr alm "
                                   "train` first")
            path = commands.alm_checkpoint_path(self.root, number)
            alm = load_checkpoint(path)
            dataset = self.dataset()
            check_checkpoint(alm, data_hash(commands.alm_training_instances(self.root, dataset)), path)
        except SemcorrError as exc:
            with self._lock:
                self.problem = str(exc)
            log.error("checkpoint: %s", exc)
            return
        with self._lock:
            self.alm, self.round, self.problem = alm, number, None
        log.info("serving %s (round %d)", path, number)

    def model_version(self) -> str:
        from semcorr.annotation.review import model_version

        return model_version(self.round + 1) if self.round is not None else "none"

    def predict(self, tasks: list, label_config: str | None) -> list[dict]:
        """One answer per task: a prediction (`review.task_prediction`) or `{"error": line}`."""
        with self._lock:
            alm, number, problem = self.alm, self.round, self.problem
        if problem is not None or alm is None:
            raise SemcorrError(problem or "no ALM checkpoint loaded")
        dataset = self.dataset()
        category = task_category(dataset, label_config)
        if alm.keypoints.get(category.name) != list(category.keypoints):
            raise SemcorrError(f"category {category.name!r} is not known to the round {number} ALM (it knows "
                               f"{', '.join(sorted(alm.keypoints)) or 'none'}); train it on this category first")
        return [self._predict_task(alm, number, dataset, category, task) for task in tasks]

    @staticmethod
    def _predict_task(alm, number: int, dataset, category, task) -> dict:
        from semcorr.alm.train import predict
        from semcorr.annotation.review import task_prediction

        task_id = task.get("id") if isinstance(task, dict) else None
        try:
            data = task.get("data") if isinstance(task, dict) else None
            image_id = data.get("semcorr_image_id") if isinstance(data, dict) else None
            if image_id not in dataset.images:
                raise SemcorrError(f"image {image_id!r} is not in the dataset (tasks come from `semcorr review push`)")
            image = dataset.images[image_id]
            instances = [i for i in dataset.instances if i.image_id == image_id and i.category_id == category.id]
            predictions = predict(alm, dataset, instances) if instances else {}
            return task_prediction(instances, category, image, number + 1, predictions)
        except Exception as exc:  # noqa: BLE001 - one task's failure (e.g. an unreadable image) is answered
            line = f"task {task_id}: {exc if isinstance(exc, SemcorrError) else f'{type(exc).__name__}: {exc}'}"
            log.error("predict: %s", line)
            return {"error": " ".join(line.split())}

    def start_training(self) -> dict:
        """Train round N+1 warm-started from round N in a background thread (one at a time)."""
        with self._lock:
            if self.training:
                return {"status": "already training"}
            if self.round is None:
                return {"status": "error", "error": self.problem or "no ALM checkpoint to warm-start from"}
            self.training = True
            target = self.round + 1
        self._thread = threading.Thread(target=self._train, args=(target,), name=f"alm-train-{target}", daemon=True)
        self._thread.start()
        return {"status": "training", "round": target}

    def _train(self, target: int) -> None:
        from semcorr import commands
        from semcorr.alm.train import TrainOptions

        try:
            _, path, count, _ = commands.run_alm_train(self.root, target, self.train_options or TrainOptions())
            log.info("trained round %d on %d instances: %s", target, count, path)
            outcome = {"round": target, "instances": count, "path": str(path)}
        except Exception as exc:  # noqa: BLE001 - a failed training is reported, the backend keeps serving
            log.error("training round %d failed: %s", target, exc)
            outcome = {"round": target, "error": " ".join(str(exc).split())}
        self.load()
        with self._lock:
            self.training, self.last_training = False, outcome

    def join(self, timeout: float | None = None) -> None:
        """Wait for the training started last (if any) to finish."""
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> dict:
        with self._lock:
            return {"round": self.round, "training": self.training, "last_training": self.last_training,
                    "problem": self.problem}


def create_app(backend: Backend):
    """The FastAPI app serving Label Studio's ML backend protocol for `backend`."""
    from fastapi import Body, FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(title="semcorr ALM backend")

    def failed(status: int, exc: Exception, what: str) -> JSONResponse:
        line = " ".join(str(exc).split())
        log.error("%s: %s", what, line)
        return JSONResponse({"status": "error", "error": line}, status_code=status)

    @app.get("/")
    @app.get("/health")
    def health():
        return {"status": "UP", "model_class": "semcorr ALM", "model_version": backend.model_version(),
                **backend.status()}

    @app.post("/setup")
    def setup(body: dict = Body(default_factory=dict)):  # noqa: B008 - FastAPI's way to take any JSON object
        problem = backend.status()["problem"]
        if problem:
            return failed(422, SemcorrError(problem), "setup")
        return {"model_version": backend.model_version()}

    @app.post("/predict")
    def predict(body: dict = Body(default_factory=dict)):  # noqa: B008
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            return failed(400, SemcorrError("the request has no `tasks` list"), "predict")
        try:
            results = backend.predict(tasks, body.get("label_config"))
        except SemcorrError as exc:
            return failed(422, exc, "predict")
        errors = [r["error"] for r in results if "error" in r]
        answer = {"results": results, "model_version": backend.model_version()}
        return {**answer, "errors": errors} if errors else answer

    @app.post("/webhook")
    def webhook(body: dict = Body(default_factory=dict)):  # noqa: B008
        action = body.get("action")
        if action not in TRAIN_EVENTS:
            return JSONResponse({"status": "ignored", "action": action}, status_code=201)
        return JSONResponse(backend.start_training(), status_code=201)

    @app.post("/train")
    def train(body: dict = Body(default_factory=dict)):  # noqa: B008
        return JSONResponse(backend.start_training(), status_code=201)

    @app.get("/versions")
    def versions():
        return {"versions": [backend.model_version()]}

    return app

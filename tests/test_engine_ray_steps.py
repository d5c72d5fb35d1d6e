"""`--engine ray` for `alm predict` (Ray Data actors), `qc` (mask cue in Ray tasks) and `vote-keypoints` over
several prototypes (one Ray task each), against a real local Ray of 2 CPUs: the same bytes as `--engine local`,
a worker killed mid-work is replaced by Ray with the output still complete and identical, and an unreachable
`--address` is one clear line. Skipped where Ray is not installed (`pip install 'semcorr[ray]'`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from semcorr import commands, engine, store
from semcorr.alm.distributed import actor_plan, predict_instances
from semcorr.alm.train import TrainOptions, save_checkpoint, train
from semcorr.cli import app
from semcorr.keypoint_design.design import DesignOptions
from semcorr.patchnet import qc
from semcorr.patchnet.run import run_qc
from tests.test_engine_ray import _files, fault_dir, local_ray  # noqa: F401 (module-scoped fixtures)
from tests.test_vote_keypoints import export_builtin

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]
RAY = engine.Engine(kind="ray")
runner = CliRunner()


def _took_fault(fault_dir: Path) -> bool:
    """Whether a worker took the armed fault (and died); resets the hook."""
    fired = (fault_dir / "fired").exists() and not (fault_dir / "armed").exists()
    for name in ("fired", "armed"):
        (fault_dir / name).unlink(missing_ok=True)
    return fired


@pytest.fixture(scope="module")
def checkpoint(synth_store, tmp_path_factory) -> Path:
    """A one-epoch scratch ALM of the session's synthetic store."""
    dataset = store.load_dataset(synth_store)
    instances = [i for i in dataset.instances if i.visible.any()]
    options = TrainOptions(backbone="scratch", pretrained=False, crop_size=64, epochs=1, batch_size=8, seed=3)
    return save_checkpoint(train(dataset, instances, options), tmp_path_factory.mktemp("alm") / "alm.pt")


def _predict_cli(dataset: Path, checkpoint: Path, out: Path, *extra: str) -> bytes:
    result = runner.invoke(app, ["alm", "predict", str(dataset), "--checkpoint", str(checkpoint), "--out", str(out),
                                 *extra])
    assert result.exit_code == 0, result.output
    return out.read_bytes()


def test_alm_predict_on_ray_writes_the_same_bytes(local_ray, synth_store, checkpoint, tmp_path):
    local = _predict_cli(synth_store, checkpoint, tmp_path / "local.json")
    assert local.count(b"[[") == len(store.load_dataset(synth_store).instances)
    assert _predict_cli(synth_store, checkpoint, tmp_path / "ray.json", "--engine", "ray") == local


def test_alm_predict_actor_killed_mid_chunk_is_replaced_and_predictions_identical(local_ray, synth_store, checkpoint,
                                                                                  fault_dir):
    dataset = store.load_dataset(synth_store)
    members = dataset.instances
    local = predict_instances(engine.LOCAL, checkpoint, dataset, members, 1 / 3, chunk_size=32)
    (fault_dir / "armed").touch()
    seen = []
    on_ray = predict_instances(RAY, checkpoint, dataset, members, 1 / 3, progress=seen.append, chunk_size=32)
    assert _took_fault(fault_dir)  # an actor did die
    assert list(on_ray) == list(local) and len(local) == len(members)  # complete, in instance order
    assert all(on_ray[k].tobytes() == local[k].tobytes() for k in local)
    assert sorted(seen) == sorted(len(part) for part in engine.chunks(members, 32))


def test_actor_plan_takes_one_gpu_each_or_the_drivers_threads_in_cores():
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0}}, {"Alive": True, "Resources": {"CPU": 4.0}},
             {"Alive": False, "Resources": {"CPU": 64.0}}]
    assert actor_plan(nodes, threads=4, chunk_count=100) == ({"num_cpus": 4, "num_gpus": 0}, 3)  # 2 + 1 actors
    assert actor_plan(nodes, threads=16, chunk_count=100) == ({"num_cpus": 8, "num_gpus": 0}, 1)
    assert actor_plan(nodes, threads=1, chunk_count=5) == ({"num_cpus": 1, "num_gpus": 0}, 5)  # no idle actors
    gpus = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 16.0}}]
    assert actor_plan(gpus, threads=16, chunk_count=100) == ({"num_gpus": 1, "num_cpus": 1}, 2)


def test_qc_on_ray_writes_the_same_tables(local_ray, synth_store, tmp_path):
    outputs = [_files(run_qc(synth_store, None, tmp_path / name, engine=runner_).files[0].parent)
               for name, runner_ in (("local", engine.LOCAL), ("ray", RAY))]
    assert set(outputs[0]) == {"suspects.csv", "suspect_images.csv", "cycles.csv", "suspects.png"}
    assert outputs[0] == outputs[1]


def test_qc_mask_task_killed_mid_chunk_is_retried_and_column_identical(local_ray, synth_store, fault_dir):
    dataset = store.load_dataset(synth_store)
    local = qc.mask_column(dataset, chunk_size=7)
    (fault_dir / "armed").touch()
    on_ray = qc.mask_column(dataset, RAY, chunk_size=7)
    assert _took_fault(fault_dir)
    assert len(local) > 300 and on_ray.equals(local)
    assert local.equals(qc.mask_column(dataset, chunk_size=10_000))  # chunking changes nothing


@pytest.fixture(scope="module")
def meshes(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("meshes")
    return [export_builtin(name, folder / f"{name}.ply") for name in ("chair", "car")]


def test_vote_keypoints_over_several_prototypes_on_ray_writes_the_same_folders(local_ray, meshes, fault_dir,
                                                                                tmp_path):
    options = DesignOptions(size=128)
    trees = []
    for name, runner_ in (("local", engine.LOCAL), ("ray", RAY)):
        if name == "ray":
            (fault_dir / "armed").touch()
        jobs = commands.design_jobs(meshes, ["chair", "car"], [], tmp_path / name)
        results = commands.run_vote_keypoints(jobs, options, runner_)
        assert [r.schema.category for r in results] == ["chair", "car"]
        trees.append(_files(tmp_path / name))
    assert _took_fault(fault_dir)  # one prototype's task died and was run again
    assert {name.split("/")[0] for name in trees[0]} == {"chair-keypoints", "car-keypoints"}
    assert "chair-keypoints/schema.json" in trees[0] and trees[0] == trees[1]


def test_vote_keypoints_cli_takes_several_meshes_and_refuses_unpaired_categories(local_ray, meshes, tmp_path):
    result = runner.invoke(app, ["vote-keypoints", *map(str, meshes), "--category", "chair", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "--category given 1 times for 2 meshes" in result.output and not any(tmp_path.iterdir())
    result = runner.invoke(app, ["vote-keypoints", *map(str, meshes), "--category", "chair", "--category", "car",
                                 "--size", "128", "--out", str(tmp_path), "--engine", "ray"])
    assert result.exit_code == 0, result.output
    assert "vote-keypoints chair:" in result.output and "vote-keypoints car:" in result.output
    assert (tmp_path / "chair-keypoints" / "schema.json").is_file() and (tmp_path / "car-keypoints").is_dir()


@pytest.mark.parametrize("command", ["alm-predict", "qc", "vote-keypoints"])
def test_unreachable_address_is_one_clear_line(command, synth_store, checkpoint, meshes, tmp_path):
    out = tmp_path / "out"
    args = {"alm-predict": ["alm", "predict", str(synth_store), "--checkpoint", str(checkpoint), "--out", str(out)],
            "qc": ["qc", str(synth_store), "--out", str(out)],
            "vote-keypoints": ["vote-keypoints", str(meshes[0]), "--category", "chair", "--out", str(out)]}[command]
    result = subprocess.run([sys.executable, "-m", "semcorr.cli", *args, "--engine", "ray", "--address", "127.0.0.1:9"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --address 127.0.0.1:9: no Ray cluster answers")
    assert not out.exists()


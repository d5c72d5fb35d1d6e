"""`--engine ray` against a real local Ray of 2 CPUs: the same bytes as `--engine local`, a worker killed
mid-task is retried by Ray with the output still complete and identical, and an unreachable `--address`
is one clear line. Skipped where Ray is not installed (`pip install 'semcorr[ray]'`)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from semcorr import commands, engine
from semcorr.builders import coco_filter as cf
from semcorr.synth.generate import SynthOptions
from semcorr.synth.prototypes import builtin_prototype
from tests.test_full_scale_small import load_bench

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]
RAY = engine.Engine(kind="ray")


@pytest.fixture(scope="module")
def fault_dir():
    """Where the engine's test hook looks for `armed` (set before Ray starts, so its workers inherit it)."""
    with tempfile.TemporaryDirectory(prefix="scfault", dir="/tmp") as folder:
        yield Path(folder)


@pytest.fixture(scope="module")
def local_ray(fault_dir):
    os.environ[engine.FAULT_DIR_ENV] = str(fault_dir)
    temp = tempfile.mkdtemp(prefix="scray", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp, logging_level="ERROR")
    yield ray
    ray.shutdown()
    os.environ.pop(engine.FAULT_DIR_ENV, None)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _synth(out: Path, runner: engine.Engine) -> dict[str, bytes]:
    options = SynthOptions(images_per_category=5, width=96, height=72, seed=3)
    prototypes = [builtin_prototype("chair"), builtin_prototype("car")]
    commands.run_synth(out, prototypes, options, engine=runner)
    return _files(out)


@pytest.fixture(scope="module")
def synth_local(tmp_path_factory):
    return _synth(tmp_path_factory.mktemp("synth") / "local", engine.LOCAL)


def test_synth_on_ray_writes_the_same_bytes(local_ray, synth_local, tmp_path):
    assert len([name for name in synth_local if name.endswith(".jpg")]) == 10
    assert _synth(tmp_path / "ray", RAY) == synth_local


def test_synth_actor_killed_mid_task_is_restarted_and_output_complete(local_ray, synth_local, fault_dir, tmp_path):
    (fault_dir / "armed").touch()
    files = _synth(tmp_path / "ray", RAY)
    assert (fault_dir / "fired").exists() and not (fault_dir / "armed").exists()  # an actor did die
    (fault_dir / "fired").unlink()
    assert files == synth_local


@pytest.fixture(scope="module")
def small_coco(tmp_path_factory):
    bench = load_bench()
    folder = tmp_path_factory.mktemp("coco")
    coco = bench.make_instances(images=80, annotations=600, seed=5)
    bench.placeholder_images(folder / "images", coco["images"])
    bench.write_json(folder / "instances.json", coco)
    return folder


def test_coco_filter_on_ray_writes_the_same_bytes(local_ray, small_coco, tmp_path):
    outputs = []
    for name, runner in (("local", engine.LOCAL), ("ray", RAY)):
        options = cf.FilterOptions(min_area=200, max_images=20)
        commands.run_coco_filter(small_coco / "instances.json", small_coco / "images", tmp_path / name,
                                 ["person", "car", "chair"], options=options, engine=runner)
        outputs.append(_files(tmp_path / name))
    assert outputs[0] == outputs[1]
    assert b'"annotations"' in outputs[0]["annotations.json"]


def test_coco_filter_task_killed_mid_chunk_is_retried_and_screening_identical(local_ray, small_coco, fault_dir):
    coco = commands._read_coco(small_coco / "instances.json")
    wanted = set(cf.MISC_CATEGORIES)
    options = cf.FilterOptions()
    local = cf.screen_instances(coco, wanted, options, small_coco / "images", chunk_size=40)
    (fault_dir / "armed").touch()
    on_ray = cf.screen_instances(coco, wanted, options, small_coco / "images", engine=RAY, chunk_size=40)
    assert (fault_dir / "fired").exists()
    (fault_dir / "fired").unlink()
    assert len(local) > 100 and on_ray.equals(local)


def test_unreachable_address_is_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "semcorr.cli", "synth", str(tmp_path / "out"), "--category",
                             "chair", "--images-per-category", "2", "--engine", "ray", "--address", "127.0.0.1:9"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --address 127.0.0.1:9: no Ray cluster answers")
    assert not (tmp_path / "out").exists()


def test_unknown_engine_is_refused_and_semcorr_does_not_import_ray():
    with pytest.raises(Exception, match="--engine 'spark': use local or ray"):
        engine.Engine(kind="spark")
    code = "import sys, semcorr.cli, semcorr.commands, semcorr.engine; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert result.stdout.strip() == "False"

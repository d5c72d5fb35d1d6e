"""Shared fixtures: a small synthetic store rendered once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from semcorr import commands
from semcorr.synth.generate import SynthOptions
from semcorr.synth.prototypes import builtin_prototype

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SMALL_OPTIONS = SynthOptions(images_per_category=20, width=200, height=150, seed=7)


@pytest.fixture(scope="session")
def synth_store(tmp_path_factory) -> Path:
    """Three built-in categories x 20 images, split 5:2:3 and paired (SPair mode).

    Covers: truncated and occluded instances, all three splits, different keypoint counts
    per category (10, 12, 9).
    """
    root = tmp_path_factory.mktemp("store") / "dataset"
    prototypes = [builtin_prototype(name) for name in ("chair", "car", "airplane")]
    commands.run_synth(root, prototypes, SMALL_OPTIONS)
    commands.run_split(root, (0.5, 0.2, 0.3), seed=0)
    commands.run_build_pairs(root)
    return root


@pytest.fixture
def store_copy(synth_store, tmp_path) -> Path:
    """A writable copy of `synth_store`."""
    target = tmp_path / "dataset"
    shutil.copytree(synth_store, target)
    return target


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason printed."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path} is absent")
    return path


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio on a free loopback port for the whole session (skipped when not installed)."""
    from semcorr.annotation import server

    if server.find_binary() is None:
        pytest.skip("Label Studio is not installed (bash scripts/setup-label-studio.sh installs it)")
    running = server.start(tmp_path_factory.mktemp("label-studio"))
    yield running
    running.stop()

"""NWB files (ndx-pose `PoseTraining` annotations) through sleap-io: `load_nwb` imports them into a store.

sleap-io reads NWB with `pynwb` and `ndx-pose`, which sleap-io 0.9 installs with itself; where
they are missing the import stops with a line naming the packages to install.
"""

from __future__ import annotations

from pathlib import Path

from semcorr.errors import SemcorrError
from semcorr.formats.pose import ImportSpec, InterchangeReport, import_labels, read_labels

EXTRA = "pip install pynwb ndx-pose"


def read_nwb_labels(path: Path):
    """sleap-io `Labels` of an NWB file; SemcorrError naming the file (or the missing extra)."""
    try:
        import ndx_pose  # noqa: F401
        import pynwb  # noqa: F401
        import sleap_io as sio
    except ImportError as exc:
        raise SemcorrError(f"{path}: reading NWB needs pynwb and ndx-pose ({exc.name} is missing); {EXTRA}") from None
    return read_labels(sio.load_nwb, path, "NWB pose file", "export it again with ndx-pose training annotations")


def load_nwb(source: Path, out_dir: Path) -> InterchangeReport:
    """Import the user instances of an NWB pose file as a new dataset directory."""
    labels = read_nwb_labels(source)
    spec = ImportSpec(labels=labels, source=Path(source), annotator="nwb")
    return import_labels([spec], out_dir, "nwb")

"""Atomic file and directory writes: nothing half-written is ever left behind.

Staging names are ours alone: `.<name>.semcorr-<pid>-<random>.partial` (directories),
`.<name>.semcorr-<pid>-<random>.tmp` (files) and `.<name>.semcorr-<pid>-<random>.old`
(the previous output while it is swapped out). A run that was killed leaves such names
behind; the next write to the same target removes those whose process is gone (and puts
back a swapped-out previous output that never got replaced). No other name is touched.
Files and folders get the permissions the process umask allows, like any other tool's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from semcorr.errors import SemcorrError

_STAGING = re.compile(r"^\.(?P<name>.+)\.semcorr-(?P<pid>\d+)-[A-Za-z0-9_]+\.(?P<kind>partial|tmp|old)$")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(path: Path, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(final: Path) -> None:
    """Remove staging litter of killed runs beside `final`; restore a swapped-out output that was never replaced."""
    final = Path(final)
    parent = final.parent
    if not parent.is_dir():
        return
    for entry in sorted(parent.iterdir()):
        match = _STAGING.match(entry.name)
        if not match or match["name"] != final.name or _alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and not final.exists() and not final.is_symlink():
            os.replace(entry, final)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def _prefix(final: Path) -> str:
    return f".{final.name}.semcorr-{os.getpid()}-"


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a staging file beside `path`, then rename it into place."""
    write_chunks(path, [data])


def write_chunks(path: Path, chunks: Iterable[str | bytes]) -> None:
    """Write text (UTF-8) or bytes pieces to a staging file beside `path`, then rename it into place.

    The whole never exists in memory; if the pieces fail part way, nothing is left behind.
    """
    path = Path(path)
    if path.is_dir():
        raise SemcorrError(f"{path}: is a folder; give a file path to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
        _apply_umask(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    """Atomically write JSON (insertion order kept, no timestamps)."""
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False) + "\n")


def _make_dirs_umask(staging: Path) -> None:
    """Give the staged tree umask permissions (mkdtemp makes 0700)."""
    _apply_umask(staging, directory=True)


MARKER = ".semcorr-output"
# What an earlier output of each kind holds (outputs made before the marker existed), and what must never be
# replaced wholesale because people made it.
SIGNATURES = {"dataset": ("annotations.json",), "spair": ("Layout", "PairAnnotation"), "misc": ("meta.json",)}
PROTECTED = {"dataset": ("annotation",)}


def check_replaceable(final: Path, kind: str) -> None:
    """Refuse to replace a folder that is not an earlier output of this kind, or that holds human work."""
    final = Path(final)
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise SemcorrError(f"{final}: exists and is not a folder; give a folder path to write")
    if not final.exists() or not any(final.iterdir()):
        return
    marker = final / MARKER
    ours = (marker.is_file() and marker.read_text().strip() == kind) or any(
        (final / name).exists() for name in SIGNATURES.get(kind, ()))
    if not ours:
        raise SemcorrError(f"{final}: exists and is not a semcorr {kind} output; choose a new folder (nothing "
                           "in it was changed)")
    for name in PROTECTED.get(kind, ()):
        if (final / name).exists():
            raise SemcorrError(f"{final}: holds annotation work in {final / name}; it is never replaced: move "
                               "the dataset away or choose another output folder")


@contextlib.contextmanager
def staged_directory(final: Path, kind: str, overwrite: bool = True) -> Iterator[Path]:
    """Yield a staging directory that replaces `final` only if the block succeeds.

    Args:
        final: the directory to create or replace. An existing file there, a folder that is not an
            earlier output of `kind`, or a dataset with annotation work are refused.
        kind: what is written ("dataset", "spair", "misc"); recorded in a `.semcorr-output` marker.
        overwrite: replace an existing `final`; otherwise its existence is an error.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise SemcorrError(f"{final}: exists; choose another output or remove it")
    check_replaceable(final, kind)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(final)
    staging = Path(tempfile.mkdtemp(prefix=_prefix(final), suffix=".partial", dir=final.parent))
    _make_dirs_umask(staging)
    try:
        write_text(staging / MARKER, f"{kind}\n")
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        trash = Path(tempfile.mkdtemp(prefix=_prefix(final), suffix=".old", dir=final.parent))
        os.rmdir(trash)
        os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, final)

"""The one place where names become paths: safe components, safe relative paths, no overlaps.

Every name that ends up in a path (image file names, category names, ids) goes through
`safe_relative` or `safe_component`; every command that writes an output checks it
against its inputs with `refuse_overlap`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from semcorr.errors import SemcorrError

_UNSAFE_COMPONENT = re.compile(r"[^A-Za-z0-9._+-]+")


def path_problem(name: object) -> str | None:
    """Why `name` is not a safe relative path (relative, no `..`, not absolute, no NUL), or None."""
    if not isinstance(name, str):
        return f"{name!r} is not a string"
    if not name or not name.strip():
        return "it is empty"
    if "\x00" in name:
        return "it contains a NUL character"
    if "\\" in name:
        return f"{name!r} contains a backslash"
    pure = PurePosixPath(name)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", name):
        return f"{name!r} is an absolute path"
    if any(part == ".." for part in pure.parts):
        return f"{name!r} climbs out of its folder with '..'"
    if pure.parts in ((), (".",)):
        return f"{name!r} names no file"
    return None


def safe_relative(name: object, what: str) -> PurePosixPath:
    """`name` as a relative path that stays inside its root; SemcorrError naming `what` otherwise.

    Args:
        name: the name read from a file or a server (e.g. an image's `file_name`).
        what: the file and record it came from, for the error message.
    """
    problem = path_problem(name)
    if problem:
        raise SemcorrError(f"{what}: unsafe path: {problem}; use a relative path inside the folder")
    return PurePosixPath(str(name))


def safe_component(name: object) -> str:
    """A single file-name component made from any name: unsafe characters become '_'.

    Used for names we turn into file names ourselves (categories, rounds), so an
    attacker-chosen category name like `/../../x` becomes `_.._.._x`, never a path.
    """
    text = _UNSAFE_COMPONENT.sub("_", str(name)).strip("._") or "_"
    return text[:120]


def resolved(path: Path) -> Path:
    """`path` made absolute with symlinks resolved (the path need not exist)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def refuse_overlap(output: Path, inputs: Iterable[Path], option: str = "output", inside_ok: bool = False) -> None:
    """Refuse an output that is, contains or (unless `inside_ok`) lies inside any input.

    Raises:
        SemcorrError: naming both paths.
    """
    out = resolved(output)
    for source in inputs:
        if source is None:
            continue
        src = resolved(source)
        if out == src or out in src.parents or (src in out.parents and not inside_ok):
            relation = "is" if out == src else ("contains" if out in src.parents else "lies inside")
            raise SemcorrError(f"{option} {output} {relation} the input {source}; choose an output folder "
                               "outside the inputs")


def refuse_file_target(output: Path, option: str = "output") -> None:
    """Refuse a directory output whose path is an existing non-directory."""
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise SemcorrError(f"{option} {output} exists and is not a folder; choose a folder path")

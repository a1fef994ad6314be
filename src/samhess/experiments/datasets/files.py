"""Finding a data set's files on disk and reading them, with errors that say what is missing."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path


def require_data_dir(dataset: str, data_dir, expected: str) -> Path:
    """``data_dir`` as a :class:`~pathlib.Path`, or a ``ValueError`` saying what it should hold."""
    if data_dir is None:
        raise ValueError(
            f"dataset {dataset!r} is read from local files: pass data_dir, a directory holding "
            f"{expected}"
        )
    return Path(data_dir).expanduser()


def locate(
    dataset: str, candidates: list[Path], names: list[str], *, gzip_ok: bool = False
) -> dict[str, Path]:
    """Find every file of ``names`` in the first directory of ``candidates`` that holds them all.

    Args:
        dataset: the data set's name, for the error message.
        candidates: directories to look in, in order of preference.
        names: the file names the data set needs.
        gzip_ok: also accept ``name + ".gz"`` for each name.

    Returns:
        A mapping from each expected name to the path found for it.

    Raises:
        ValueError: no candidate directory holds every file; the message names the expected files,
            the directories searched and, for the first one, which files are missing.
    """
    for directory in candidates:
        found = {}
        for name in names:
            options = [directory / name] + ([directory / f"{name}.gz"] if gzip_ok else [])
            path = next((p for p in options if p.is_file()), None)
            if path is not None:
                found[name] = path
        if len(found) == len(names):
            return found
    first = candidates[0]
    missing = [n for n in names if not any(
        (first / c).is_file() for c in ([n, f"{n}.gz"] if gzip_ok else [n]))]
    suffix = " (each optionally gzipped, .gz)" if gzip_ok else ""
    searched = " or ".join(str(c) for c in candidates)
    raise ValueError(
        f"dataset {dataset!r} needs the files {', '.join(names)}{suffix} in {searched}; "
        f"missing from {first}: {', '.join(missing)}"
    )


def read_bytes(path: Path) -> bytes:
    """The contents of ``path``, decompressed when its name ends in ``.gz``."""
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path} is not a valid gzip file: {error}") from None

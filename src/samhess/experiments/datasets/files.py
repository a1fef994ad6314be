"""Finding a data set's files on disk and reading them, with errors that say what is missing."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from samhess.errors import DataError


class DataDirectoryError(DataError):
    """A data set read from files was given no ``data_dir``, or one that does not exist.

    The message names the directory as ``argument`` says it was passed: ``data_dir`` in the
    library; the command line re-raises it with :meth:`naming` ``--data-dir``.

    Args:
        dataset: the data set's name.
        expected: what ``data_dir`` should be, e.g. ``"a directory holding train, test"``.
        path: the directory given, or ``None`` when none was.
        argument: how the directory was passed.
    """

    def __init__(self, dataset: str, expected: str, path: Path | None = None,
                 argument: str = "data_dir"):
        self.dataset, self.expected, self.path, self.argument = dataset, expected, path, argument
        if path is None:
            message = f"dataset {dataset!r} is read from local files: pass {argument}, {expected}"
        else:
            message = f"dataset {dataset!r}: {argument} directory does not exist: {path}"
        super().__init__(message)

    def naming(self, argument: str) -> DataDirectoryError:
        """The same error, naming the directory as ``argument`` (e.g. ``"--data-dir"``)."""
        return DataDirectoryError(self.dataset, self.expected, self.path, argument)

    def __reduce__(self):  # picklable, so torchrun ranks can pass it on
        return DataDirectoryError, (self.dataset, self.expected, self.path, self.argument)


def require_data_dir(dataset: str, data_dir, expected: str) -> Path:
    """``data_dir`` as an existing directory's :class:`~pathlib.Path`.

    Raises:
        DataDirectoryError: ``data_dir`` is ``None`` (the message says it should hold
            ``expected``) or does not exist.
    """
    if data_dir is None:
        raise DataDirectoryError(dataset, f"a directory holding {expected}")
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataDirectoryError(dataset, f"a directory holding {expected}", path)
    return path


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
    raise DataError(
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
        raise DataError(f"{path} is not a valid gzip file: {error}") from None

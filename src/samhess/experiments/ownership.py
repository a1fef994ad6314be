"""Which files of a directory samhess wrote, identified by their content.

A run (or a comparison) records every file it writes in ``DIR/.samhess-files.json``, the
directory's manifest, with the SHA-256 digest of the bytes it wrote. A file counts as samhess's
(:meth:`OwnedFiles.owns`) only while its content is what samhess wrote: a file the user put
there, or a samhess file the user has since edited, is the user's. Cleanup and ``--force`` remove
only samhess's files (:meth:`OwnedFiles.remove_owned`), and no write replaces a file that is not
samhess's (:meth:`OwnedFiles.write_files` raises instead).

The manifest stays right however the process stops, ``kill -9`` included:

* a whole file is replaced atomically (:func:`samhess.experiments.runfiles.write_bytes_atomic`)
  after the manifest has accepted both its old and its new content, so either is samhess's;
* an append-only log (``metrics.jsonl``) is recorded line by line (one digest per line); it is
  samhess's while its complete lines are a prefix of the recorded ones, followed by at most one
  line the manifest has not caught up with (complete, or cut short by the kill).

Files that another library writes into a samhess folder (TensorBoard's event files) are recorded
by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from samhess.distributed import is_main_process
from samhess.errors import RunDirectoryError, RunFileError
from samhess.experiments import runfiles

__all__ = ["MANIFEST_FILE", "OwnedFiles", "digest"]

MANIFEST_FILE = ".samhess-files.json"
MANIFEST_FORMAT = "samhess-files-1"


def digest(data: bytes) -> str:
    """The SHA-256 of ``data``, in hex."""
    return hashlib.sha256(data).hexdigest()


class OwnedFiles:
    """The manifest of one directory: what samhess wrote there.

    Every operation reads the manifest from disk and checks the file's content, so several
    instances for one directory (a run and its report) stay consistent. Writes happen on the
    main process only (under torchrun, rank 0).

    Args:
        directory: the run or comparison directory.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST_FILE

    def exists(self) -> bool:
        """Whether the directory has a manifest (samhess has written there)."""
        return self.manifest_path.exists()

    # -- the manifest ---------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"format": MANIFEST_FORMAT, "kind": None, "files": {}}
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunFileError(f"{self.manifest_path} is not readable JSON: {exc}") from None
        if (not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT
                or not isinstance(manifest.get("files"), dict)):
            raise RunFileError(f"{self.manifest_path} is not a samhess file list")
        return manifest

    def _write(self, manifest: dict[str, Any]) -> None:
        runfiles.write_text_atomic(self.manifest_path, json.dumps(manifest, indent=1) + "\n")

    @property
    def kind(self) -> str | None:
        """What the directory holds: ``"run"``, ``"comparison"`` or ``None`` (not recorded)."""
        return self._read().get("kind")

    def set_kind(self, kind: str) -> None:
        """Record what the directory holds."""
        if not is_main_process():
            return
        manifest = self._read()
        manifest["kind"] = kind
        self._write(manifest)

    # -- what is whose --------------------------------------------------------------------------

    def recorded(self) -> list[str]:
        """The names the manifest records (present or not), relative to the directory."""
        return sorted(self._read()["files"])

    def owns(self, name: str) -> bool:
        """Whether ``name`` exists and holds content samhess wrote."""
        return _matches(self.directory / name, self._read()["files"].get(name))

    def foreign(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` that exist and are not samhess's."""
        entries = self._read()["files"]
        return [name for name in names if (self.directory / name).exists()
                and not _matches(self.directory / name, entries.get(name))]

    # -- writing --------------------------------------------------------------------------------

    def write_files(self, files: Mapping[str, bytes]) -> None:
        """Replace each ``name`` by its bytes, atomically, after recording them in the manifest.

        Raises:
            RunDirectoryError: a file of that name exists and is not samhess's; nothing is
                written then.
        """
        if not is_main_process():
            return
        manifest = self._read()
        entries = manifest["files"]
        for name in files:
            path = self.directory / name
            if path.exists() and not _matches(path, entries.get(name)):
                raise _not_ours(path)
        for name, data in files.items():
            path = self.directory / name
            old = [_whole(path.read_bytes())] if path.exists() else []
            entries[name] = {"versions": [*old, _whole(data)]}
        self._write(manifest)
        for name, data in files.items():
            runfiles.write_bytes_atomic(self.directory / name, data)

    def write_bytes(self, name: str, data: bytes) -> None:
        """:meth:`write_files` of one file."""
        self.write_files({name: data})

    def write_json(self, name: str, value: Any) -> None:
        """Replace ``name`` by ``value`` as indented JSON (:func:`runfiles.dumps_json`)."""
        self.write_bytes(name, (runfiles.dumps_json(value) + "\n").encode("utf-8"))

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def append_line(self, name: str, line: bytes) -> None:
        """Append one ``\n``-terminated line to the log ``name`` and force it to disk."""
        if not line.endswith(b"\n") or b"\n" in line[:-1]:
            raise ValueError("append_line takes exactly one line ending in a newline")
        self._change_log(name, "ab", lambda handle: handle.write(line))

    def truncate_log(self, name: str, size: int) -> None:
        """Cut the log ``name`` to its first ``size`` bytes (a line boundary)."""
        self._change_log(name, "r+b", lambda handle: handle.truncate(size))

    def _change_log(self, name: str, mode: str, change) -> None:
        """Apply ``change`` to the open log (samhess's, or absent for an append), force it to
        disk, then record its lines."""
        if not is_main_process():
            return
        path = self.directory / name
        manifest = self._read()
        if (path.exists() or mode != "ab") and not _matches(path, manifest["files"].get(name)):
            raise _not_ours(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, mode) as handle:
                change(handle)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise runfiles.naming(exc, path) from None
        manifest["files"][name] = {"lines": _line_digests(path.read_bytes())}
        self._write(manifest)

    def record_external(self, names: Iterable[str]) -> None:
        """Record files another library wrote here (TensorBoard's event files), by name."""
        if not is_main_process():
            return
        manifest = self._read()
        for name in names:
            manifest["files"].setdefault(name, {"external": True})
        self._write(manifest)

    # -- removing -------------------------------------------------------------------------------

    def remove_owned(self, names: Iterable[str] | None = None) -> list[str]:
        """Delete samhess's files (all, or those of ``names``), then the folders that held them
        if they are left empty; files that are not samhess's stay. The manifest goes last, once
        it records nothing.

        Returns:
            The names left in place because they are not (or no longer) samhess's.
        """
        if not is_main_process():
            return []
        manifest = self._read()
        entries = manifest["files"]
        chosen = sorted(entries) if names is None else [n for n in names if n in entries]
        kept = []
        for name in chosen:
            path = self.directory / name
            if _matches(path, entries[name]):
                path.unlink()
            elif path.exists():
                kept.append(name)
            del entries[name]
            parent = path.parent
            while parent != self.directory and self.directory in parent.parents:
                with contextlib.suppress(OSError):  # a folder holding anything else stays
                    parent.rmdir()
                parent = parent.parent
        if entries:
            self._write(manifest)
        else:
            with contextlib.suppress(FileNotFoundError):
                self.manifest_path.unlink()
        return kept


def _whole(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": digest(data)}


def _line_digests(data: bytes) -> list[str]:
    """The digest of each complete line (a trailing piece without newline is left out)."""
    return [digest(line) for line in data.split(b"\n")[:-1]]


def _matches(path: Path, entry: dict[str, Any] | None) -> bool:
    """Whether ``path`` exists with content ``entry`` accepts."""
    if entry is None or not path.is_file() or path.is_symlink():
        return False
    if entry.get("external"):
        return True
    data = path.read_bytes()
    if "lines" in entry:
        recorded = entry["lines"]
        pieces = data.split(b"\n")
        complete, rest = pieces[:-1], pieces[-1]
        # One line the manifest has not caught up with may follow (written just before a kill).
        ahead = len(complete) - len(recorded) + (1 if rest else 0)
        if ahead > 1:
            return False
        return all(digest(line) == known for line, known in zip(complete, recorded))
    return any(version["size"] == len(data) and version["sha256"] == digest(data)
               for version in entry.get("versions", []))


def _not_ours(path: Path) -> RunDirectoryError:
    return RunDirectoryError(f"{path} was not written by samhess (or was changed since); move "
                             "it away or choose another --out")

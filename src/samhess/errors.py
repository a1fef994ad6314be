"""The errors samhess raises at its boundaries, for a user to read and fix.

Every layer may raise these; the command line turns exactly these (and an ``OSError`` on a path
the user named) into one line on stderr and exit status 2. Any other exception is a bug and
keeps its traceback.

The classes also derive from the built-in exception a library caller would catch for the same
mistake (``ValueError``, ``TypeError``, ``FloatingPointError``), so that code written against
the built-in types keeps working::

    SamhessError
    ├── UsageError (ValueError)              a bad setting, name or combination of flags
    │   ├── SettingTypeError (TypeError)     a value of the wrong type
    │   └── RunDirectoryError                an output directory that cannot be used as asked
    │       └── DirectoryLockedError         another process writes there
    ├── DataError (ValueError)               data files missing or malformed
    ├── RunFileError (ValueError)            a run's own files unreadable, corrupt or inconsistent
    └── DivergenceError (FloatingPointError) training or an optimizer met a non-finite value
"""

from __future__ import annotations

__all__ = [
    "SamhessError",
    "UsageError",
    "SettingTypeError",
    "RunDirectoryError",
    "DirectoryLockedError",
    "DataError",
    "RunFileError",
    "DivergenceError",
]


class SamhessError(Exception):
    """An error a user can cause and fix; its message is one line naming the bad value."""


class UsageError(SamhessError, ValueError):
    """A bad setting, flag, name or combination of them."""


class SettingTypeError(UsageError, TypeError):
    """A setting or argument of the wrong type."""


class RunDirectoryError(UsageError):
    """An output directory that cannot be used as asked (holds something else, not ours)."""


class DirectoryLockedError(RunDirectoryError):
    """Another process holds the directory's lock: it is writing there now."""


class DataError(SamhessError, ValueError):
    """Data files that are missing, unreadable or not in the expected format."""


class RunFileError(SamhessError, ValueError):
    """A run's own files (config, metrics, checkpoint, comparison) unreadable or corrupt."""


class DivergenceError(SamhessError, FloatingPointError):
    """A non-finite gradient, loss or measurement: the run (or the step) diverged."""

"""Progress bars for long work: drawn on a terminal; silent in logs, pipes, tests, ``--quiet``."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress_enabled(quiet: bool = False) -> bool:
    """Draw bars only when stderr is a terminal and the user did not ask for quiet."""
    if quiet:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False


def progress_bar(*, total: int, initial: int = 0, desc: str = "", enabled: bool = True,
                 leave: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, or a disabled one that accepts the same calls and prints nothing."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, leave=leave,
                file=sys.stderr, dynamic_ncols=True, **kwargs)

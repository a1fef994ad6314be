"""The progress bar: drawn when stderr is a terminal, silent with --quiet or in a pipe."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios
import subprocess
import sys

import pytest

from .conftest import tiny_cli_args

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")


def _stderr_of_run_on_a_terminal(tmp_path, *extra: str) -> str:
    """Run a tiny ``samhess run`` with stderr on a pseudo-terminal; return what it drew there."""
    leader, follower = pty.openpty()
    # a new pseudo-terminal is 0 columns wide, where tqdm draws an empty line: give it 80
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        process = subprocess.run(
            [sys.executable, "-m", "samhess", "run", "--optimizer", "sgd",
             "--out", str(tmp_path / "run"), *tiny_cli_args(), *extra],
            stdout=subprocess.DEVNULL, stderr=follower, timeout=120,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal is closed once everything written has been read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    assert process.returncode == 0
    return b"".join(chunks).decode("utf-8", "replace")


def test_a_terminal_gets_a_progress_bar_over_the_run_steps(tmp_path):
    drawn = _stderr_of_run_on_a_terminal(tmp_path)
    steps = tiny_cli_args()[tiny_cli_args().index("--steps") + 1]
    # tqdm redraws at most every 0.1 s and a tiny run is faster, so the first frame is certain
    assert "sgd seed 0:   0%" in drawn and f"0/{steps}" in drawn and "step/s" in drawn


def test_quiet_draws_nothing_on_a_terminal(tmp_path):
    assert _stderr_of_run_on_a_terminal(tmp_path, "--quiet") == ""


def test_a_pipe_gets_no_progress_bar(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "samhess", "run", "--optimizer", "sgd",
         "--out", str(tmp_path / "run"), *tiny_cli_args()],
        capture_output=True, text=True, timeout=120,
    )
    assert process.returncode == 0 and process.stderr == ""

"""Character-level language modelling: the shipped corpus (``"chars"``) or any UTF-8 text file.

The text is encoded character by character over its own sorted alphabet, cut into a training part
(the first ``1 - test_fraction`` of the characters) and a held-out part (the rest), and each part
into windows of ``seq_len + 1`` characters: the first ``seq_len`` are the input, the last
``seq_len`` the targets, so that every position predicts the next character. Splitting the text
before cutting windows keeps every held-out character out of the training windows.

Reference:
    A. Karpathy, "The Unreasonable Effectiveness of Recurrent Neural Networks", 2015, for the
    character-level setting; A. Radford et al., "Improving Language Understanding by Generative
    Pre-Training", 2018, for next-token training of a decoder-only Transformer.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from samhess.errors import DataError
from samhess._validation import check_int_at_least

from .files import DataDirectoryError
from .preprocessing import check_limit, check_test_fraction, first_rows
from .task import TaskData

#: The corpus shipped as package data: short essays written for samhess (MIT licence).
CORPUS_FILE = "commonplace.txt"


def read_corpus() -> str:
    """The shipped corpus as a string."""
    return (
        resources.files("samhess.experiments").joinpath("corpus", CORPUS_FILE).read_text("utf-8")
    )


def encode(text: str) -> tuple[np.ndarray, str]:
    """Token ids of ``text`` over its sorted alphabet, and that alphabet as a string.

    ``alphabet[ids[i]] == text[i]`` for every ``i``.
    """
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    alphabet, ids = np.unique(codepoints, return_inverse=True)
    return ids.astype(np.int64), "".join(map(chr, alphabet))


def windows(ids: np.ndarray, seq_len: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-token targets of the ``seq_len + 1``-id windows starting every ``stride``."""
    spans = np.lib.stride_tricks.sliding_window_view(ids, seq_len + 1)[::stride]
    return spans[:, :-1].copy(), spans[:, 1:].copy()


def character_task(
    name: str,
    text: str,
    source: str,
    *,
    seed: int,
    seq_len: int,
    stride: int | None,
    test_fraction: float,
    limit: int | None,
    test_limit: int | None,
) -> TaskData:
    """A ``"language_model"`` :class:`TaskData` from ``text`` (see the module docstring).

    Args:
        name: the data set's name.
        text: the whole text.
        source: where the text came from, recorded in the metadata.
        seed: shuffles the order of the training windows (the held-out windows stay in text order).
        seq_len: length ``T`` of each input and target sequence.
        stride: distance between the starts of consecutive training windows; ``None`` means
            ``seq_len`` (windows that share only their boundary character). Held-out windows always
            use ``seq_len``, so each held-out character is scored once.
        test_fraction: share of the characters held out, taken from the end of the text.
        limit: keep only the first ``limit`` training windows (after shuffling).
        test_limit: keep only the first ``test_limit`` held-out windows.
    """
    seq_len = check_int_at_least("seq_len", seq_len, 1)
    stride = seq_len if stride is None else check_int_at_least("stride", stride, 1)
    test_fraction = check_test_fraction(test_fraction)
    limit = check_limit("limit", limit)
    test_limit = check_limit("test_limit", test_limit)

    ids, alphabet = encode(text)
    split = len(ids) - int(len(ids) * test_fraction)
    train_ids, test_ids = ids[:split], ids[split:]
    shortest = min(len(train_ids), len(test_ids))
    if shortest < seq_len + 1:
        raise DataError(
            f"{source} holds {len(ids)} characters; with test_fraction={test_fraction} the "
            f"{'training' if len(train_ids) <= len(test_ids) else 'held-out'} part has {shortest}, "
            f"fewer than seq_len + 1 = {seq_len + 1}: use a longer text or a smaller seq_len"
        )
    train_x, train_y = windows(train_ids, seq_len, stride)
    order = np.random.default_rng(seed).permutation(len(train_x))
    train_x, train_y = train_x[order], train_y[order]
    test_x, test_y = windows(test_ids, seq_len, seq_len)

    return TaskData(
        name=name,
        kind="language_model",
        train_inputs=torch.from_numpy(first_rows(train_x, limit)),
        train_targets=torch.from_numpy(first_rows(train_y, limit)),
        test_inputs=torch.from_numpy(first_rows(test_x, test_limit)),
        test_targets=torch.from_numpy(first_rows(test_y, test_limit)),
        input_shape=(seq_len,),
        num_outputs=len(alphabet),
        metadata={
            "source": source,
            "vocabulary": alphabet,
            "num_characters": len(ids),
            "seq_len": seq_len,
            "stride": stride,
            "split": {"test_fraction": test_fraction, "seed": seed},
        },
    )


def load_chars(
    *,
    data_dir=None,
    seed: int = 0,
    seq_len: int = 64,
    stride: int | None = None,
    test_fraction: float = 0.1,
    limit: int | None = None,
    test_limit: int | None = None,
) -> TaskData:
    """Character-level language modelling on the corpus shipped with samhess (about 23 KB).

    Args:
        data_dir: unused (the corpus ships with the package).
        seed, seq_len, stride, test_fraction, limit, test_limit: see :func:`character_task`.
    """
    del data_dir
    return character_task(
        "chars", read_corpus(), f"samhess corpus {CORPUS_FILE}", seed=seed, seq_len=seq_len,
        stride=stride, test_fraction=test_fraction, limit=limit, test_limit=test_limit,
    )


def find_text_file(data_dir, file_name: str | None) -> Path:
    """The text file named by ``data_dir`` (a file) or inside it (a directory).

    In a directory, ``file_name`` picks the file; without it the directory must hold exactly one
    ``*.txt`` file.
    """
    expected = "a UTF-8 text file or a directory holding one"
    if data_dir is None:
        raise DataDirectoryError("text", expected)
    path = Path(data_dir).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataDirectoryError("text", expected, path)
    if file_name is not None:
        candidate = path / file_name
        if not candidate.is_file():
            raise DataError(f"dataset 'text' needs the file {file_name} in {path}; it is missing")
        return candidate
    texts = sorted(p for p in path.glob("*.txt") if p.is_file())
    if len(texts) != 1:
        found = ", ".join(p.name for p in texts) or "none"
        raise DataError(
            f"dataset 'text' needs exactly one *.txt file in {path} (found: {found}); "
            f"pass the file itself as data_dir or name it with the file_name option"
        )
    return texts[0]


def load_text(
    *,
    data_dir=None,
    seed: int = 0,
    file_name: str | None = None,
    seq_len: int = 64,
    stride: int | None = None,
    test_fraction: float = 0.1,
    limit: int | None = None,
    test_limit: int | None = None,
) -> TaskData:
    """Character-level language modelling on a UTF-8 text file of the user's.

    Args:
        data_dir: the text file, or a directory holding it.
        seed: shuffles the order of the training windows.
        file_name: the file's name inside the directory ``data_dir`` (needed when the directory
            does not hold exactly one ``*.txt`` file).
        seq_len, stride, test_fraction, limit, test_limit: see :func:`character_task`.

    Raises:
        ValueError: the file is missing, is not UTF-8, or is too short for one window per split.
    """
    path = find_text_file(data_dir, file_name)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not valid UTF-8 text: {error}") from None
    # Windows line endings would add a '\r' token that carries no information.
    text = text.replace("\r\n", "\n")
    return character_task(
        "text", text, str(path), seed=seed, seq_len=seq_len, stride=stride,
        test_fraction=test_fraction, limit=limit, test_limit=test_limit,
    )

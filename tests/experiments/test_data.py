"""Data sets: the standard file formats, embedded sets, determinism, the known optimum."""

from __future__ import annotations

import gzip
import json
import pickle
import random
import struct

import numpy as np
import pytest
import torch
from torch import nn

from samhess.experiments.data import (
    DATASET_NAMES,
    EMBEDDED_DATASETS,
    TaskData,
    dataset_options,
    load_dataset,
    synthetic_teacher,
)
from samhess.experiments.datasets import mnist_1d
from samhess.experiments.datasets.characters import read_corpus
from samhess.experiments.datasets.files import DataDirectoryError
from samhess.experiments.datasets.idx import parse_idx


def assert_same_task(a: TaskData, b: TaskData) -> None:
    for field in ("train_inputs", "train_targets", "test_inputs", "test_targets"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.metadata == b.metadata


def expected_standardized(train: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Per-channel standardization of ``images`` by ``train``'s statistics, written out by hand."""
    channels = train.shape[1]
    flat = train.astype(np.float64).transpose(1, 0, *range(2, train.ndim)).reshape(channels, -1)
    mean, std = flat.mean(axis=1), flat.std(axis=1)
    shape = (1, channels) + (1,) * (images.ndim - 2)
    return (images - mean.reshape(shape)) / std.reshape(shape)


# ----------------------------------------------------------------------------- registry


def test_dataset_names_cover_the_contract():
    assert set(DATASET_NAMES) == {
        "digits", "mnist1d", "synthetic", "chars",
        "cifar10", "cifar100", "mnist", "fashion-mnist", "text",
    }
    assert set(EMBEDDED_DATASETS) == {"digits", "mnist1d", "synthetic", "chars"}


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion-mnist", "text"])
def test_file_based_datasets_ask_for_data_dir(name):
    with pytest.raises(DataDirectoryError, match=f"dataset '{name}' is read from local files"):
        load_dataset(name)


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match="dataset.*'imagenet'"):
        load_dataset("imagenet")


def test_unknown_option_is_named_with_the_accepted_ones():
    with pytest.raises(ValueError, match="unknown option 'nosie' for dataset 'synthetic'.*noise"):
        load_dataset("synthetic", nosie=0.1)


@pytest.mark.parametrize("value, error", [(0, ValueError), (1.5, TypeError), (True, TypeError)])
def test_limit_is_validated(value, error):
    with pytest.raises(error, match="limit"):
        load_dataset("synthetic", limit=value)


def test_seed_is_validated():
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        load_dataset("digits", seed=-1)


def test_every_dataset_accepts_limit_and_test_limit():
    for name in DATASET_NAMES:
        assert {"limit", "test_limit"} <= set(dataset_options(name)), name


def test_task_data_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="train_targets holds 2"):
        TaskData("x", "classification", torch.zeros(3, 4), torch.zeros(2, dtype=torch.long),
                 torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), (4,), 2)
    with pytest.raises(ValueError, match="kind"):
        TaskData("x", "ranking", torch.zeros(1, 4), torch.zeros(1), torch.zeros(1, 4),
                 torch.zeros(1), (4,), 1)


# ----------------------------------------------------------------------------- digits


def test_digits_split_is_a_stratified_partition_of_sklearn_digits():
    from sklearn.datasets import load_digits

    raw, labels = load_digits(return_X_y=True)
    data = load_dataset("digits", seed=3)
    assert data.kind == "classification" and data.num_outputs == 10
    assert data.train_inputs.shape == (1437, 1, 8, 8) and data.test_inputs.shape == (360, 1, 8, 8)
    assert data.train_inputs.dtype == torch.float32 and data.train_targets.dtype == torch.int64
    # Train pixels are standardized.
    assert abs(float(data.train_inputs.double().mean())) < 1e-6
    assert float(data.train_inputs.double().std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)
    # Undoing the normalization gives back exactly the 1797 sklearn images, each once, with labels.
    norm = data.metadata["normalization"]
    inputs = torch.cat([data.train_inputs, data.test_inputs]).double()
    recovered = np.round((inputs * norm["std"][0] + norm["mean"][0]).reshape(-1, 64).numpy())
    targets = torch.cat([data.train_targets, data.test_targets]).numpy()
    pairs = sorted(map(tuple, np.column_stack([recovered.astype(int), targets])))
    assert pairs == sorted(map(tuple, np.column_stack([raw.astype(int), labels])))
    # Stratified: every class is held out in proportion (to within rounding).
    for digit in range(10):
        held_out = int((data.test_targets == digit).sum())
        assert abs(held_out - 0.2 * int((labels == digit).sum())) <= 1


def test_digits_seed_decides_the_split_deterministically():
    assert_same_task(load_dataset("digits", seed=1), load_dataset("digits", seed=1))
    assert not torch.equal(load_dataset("digits", seed=1).train_inputs,
                           load_dataset("digits", seed=2).train_inputs)


def test_limit_keeps_a_prefix_of_the_full_training_set():
    full = load_dataset("digits", seed=0)
    small = load_dataset("digits", seed=0, limit=10, test_limit=7)
    assert torch.equal(small.train_inputs, full.train_inputs[:10])
    assert torch.equal(small.train_targets, full.train_targets[:10])
    assert torch.equal(small.test_inputs, full.test_inputs[:7])
    assert small.metadata["normalization"] == full.metadata["normalization"]


# ----------------------------------------------------------------------------- mnist1d


def test_mnist1d_default_is_the_published_size():
    data = load_dataset("mnist1d")
    assert data.train_inputs.shape == (4000, 1, 40) and data.test_inputs.shape == (1000, 1, 40)
    assert data.input_shape == (1, 40) and data.num_outputs == 10
    assert set(data.train_targets.tolist()) == set(range(10))


def test_mnist1d_equals_the_package_output_and_leaves_global_rng_alone():
    from mnist1d.data import get_dataset_args, make_dataset

    mnist_1d._generate.cache_clear()
    random.seed(11)
    np.random.seed(11)
    expected_python, expected_numpy = random.random(), np.random.random_sample()
    random.seed(11)
    np.random.seed(11)
    data = load_dataset("mnist1d", num_samples=200)
    assert (random.random(), np.random.random_sample()) == (expected_python, expected_numpy)

    args = get_dataset_args()
    args.num_samples = 200
    reference = make_dataset(args)
    assert data.train_inputs.shape == (160, 1, 40) and data.test_inputs.shape == (40, 1, 40)
    assert torch.equal(data.train_inputs[:, 0], torch.tensor(reference["x"], dtype=torch.float32))
    assert torch.equal(data.test_targets, torch.tensor(reference["y_test"]))
    # A second, uncached generation is identical.
    mnist_1d._generate.cache_clear()
    assert_same_task(data, load_dataset("mnist1d", num_samples=200))


# ----------------------------------------------------------------------------- synthetic


def student_with_teacher(data: TaskData) -> nn.Module:
    hidden = data.metadata["teacher"]["hidden_sizes"]
    sizes = [data.input_shape[0], *hidden, data.num_outputs]
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    student = nn.Sequential(*layers[:-1])
    linears = [m for m in student if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for linear, (weight, bias) in zip(linears, synthetic_teacher(data)):
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
    return student


def test_synthetic_shapes_and_determinism():
    data = load_dataset("synthetic", seed=4, num_train=50, num_test=20, input_dim=5, output_dim=3)
    assert data.kind == "regression" and data.num_outputs == 3 and data.input_shape == (5,)
    assert data.train_targets.shape == (50, 3) and data.test_inputs.shape == (20, 5)
    assert data.train_targets.dtype == torch.float32
    assert_same_task(data, load_dataset("synthetic", seed=4, num_train=50, num_test=20,
                                        input_dim=5, output_dim=3))
    other = load_dataset("synthetic", seed=5, num_train=50, num_test=20, input_dim=5, output_dim=3)
    assert not torch.equal(data.train_targets, other.train_targets)
    json.dumps(data.describe())


def test_synthetic_teacher_fits_noiseless_targets_exactly():
    data = load_dataset("synthetic", seed=2, noise=0.0)
    student = student_with_teacher(data)
    with torch.no_grad():
        assert float(nn.MSELoss()(student(data.train_inputs), data.train_targets)) == 0.0
        assert float(nn.MSELoss()(student(data.test_inputs), data.test_targets)) == 0.0


def test_synthetic_teacher_train_loss_is_the_noise_power():
    sigma, n = 0.3, 4096
    noisy = load_dataset("synthetic", seed=7, noise=sigma, num_train=n)
    clean = load_dataset("synthetic", seed=7, noise=0.0, num_train=n)
    unit = load_dataset("synthetic", seed=7, noise=1.0, num_train=n)
    assert torch.equal(noisy.train_inputs, clean.train_inputs)
    student = student_with_teacher(noisy)
    with torch.no_grad():
        loss = float(nn.MSELoss()(student(noisy.train_inputs), noisy.train_targets))
    # The unit-variance noise draws, recovered from two other data sets with the same seed.
    eps = unit.train_targets.double() - clean.train_targets.double()
    noise_power = sigma**2 * float(eps.square().mean())
    assert loss == pytest.approx(noise_power, rel=1e-4)
    assert noisy.metadata["teacher_train_loss"] == pytest.approx(noise_power, rel=1e-4)
    assert noisy.metadata["noise_variance"] == pytest.approx(sigma**2)
    # mean(eps^2) of n standard normals has standard deviation sqrt(2 / n): five of them.
    assert float(eps.square().mean()) == pytest.approx(1.0, abs=5 * (2 / n) ** 0.5)
    assert float(eps.mean()) == pytest.approx(0.0, abs=5 / n**0.5)


def test_synthetic_teacher_of_other_data_is_refused():
    with pytest.raises(ValueError, match="synthetic"):
        synthetic_teacher(load_dataset("digits", limit=2))


# ----------------------------------------------------------------------------- chars and text


def decode(data: TaskData, ids: torch.Tensor) -> str:
    return "".join(data.metadata["vocabulary"][i] for i in ids.tolist())


def test_chars_windows_are_corpus_text_with_next_character_targets():
    corpus = read_corpus()
    data = load_dataset("chars", seq_len=32)
    assert data.kind == "language_model" and data.input_shape == (32,)
    assert data.train_inputs.dtype == torch.int64
    assert data.train_targets.shape == data.train_inputs.shape
    assert data.metadata["vocabulary"] == "".join(sorted(set(corpus)))
    assert data.num_outputs == len(set(corpus))
    split = len(corpus) - int(0.1 * len(corpus))
    # Windows of seq_len + 1 characters, stride seq_len, over the first 90% of the text.
    assert data.num_train == (split - 33) // 32 + 1
    assert data.num_test == (len(corpus) - split - 33) // 32 + 1
    assert torch.equal(data.train_inputs[:, 1:], data.train_targets[:, :-1])
    starts = set()
    for inputs, targets in zip(data.train_inputs, data.train_targets):
        text = decode(data, inputs) + decode(data, targets[-1:])
        start = corpus.find(text)
        assert 0 <= start and start + 33 <= split
        starts.add(start)
    assert starts == set(range(0, split - 32, 32))
    first_test = decode(data, data.test_inputs[0])
    assert corpus[split:split + 32] == first_test


def test_chars_seed_only_reorders_training_windows():
    a = load_dataset("chars", seed=0)
    b = load_dataset("chars", seed=1)
    assert_same_task(a, load_dataset("chars", seed=0))
    assert not torch.equal(a.train_inputs, b.train_inputs)
    assert sorted(a.train_inputs.tolist()) == sorted(b.train_inputs.tolist())
    assert torch.equal(a.test_inputs, b.test_inputs)


def test_text_file_windows_and_stride(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes("abcdefghij\r\nklmnopqrstuvwxyz\u00e9".encode())
    data = load_dataset("text", data_dir=path, seq_len=4, stride=2, test_fraction=0.25)
    text = "abcdefghij\nklmnopqrstuvwxyz\u00e9"
    split = len(text) - int(0.25 * len(text))
    assert data.metadata["vocabulary"] == "".join(sorted(set(text)))
    windows = sorted(decode(data, x) for x in data.train_inputs)
    assert windows == sorted(text[s:s + 4] for s in range(0, split - 4, 2))
    assert [decode(data, x) for x in data.test_inputs] == [text[split:split + 4]]
    # The directory holding one .txt file finds it too.
    assert_same_task(data, load_dataset("text", data_dir=tmp_path, seq_len=4, stride=2,
                                        test_fraction=0.25))


def test_text_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("text")
    with pytest.raises(ValueError, match=r"exactly one \*\.txt.*found: none"):
        load_dataset("text", data_dir=tmp_path)
    (tmp_path / "a.txt").write_text("x" * 1000)
    (tmp_path / "b.txt").write_text("y" * 1000)
    with pytest.raises(ValueError, match="found: a.txt, b.txt"):
        load_dataset("text", data_dir=tmp_path)
    assert load_dataset("text", data_dir=tmp_path, file_name="b.txt").metadata["vocabulary"] == "y"
    with pytest.raises(ValueError, match="c.txt"):
        load_dataset("text", data_dir=tmp_path, file_name="c.txt")
    (tmp_path / "bad.bin").write_bytes(b"\xff\xfe\xfa" * 100)
    with pytest.raises(ValueError, match="not valid UTF-8"):
        load_dataset("text", data_dir=tmp_path / "bad.bin")
    with pytest.raises(ValueError, match="fewer than seq_len"):
        load_dataset("text", data_dir=tmp_path / "a.txt", seq_len=100)


# ----------------------------------------------------------------------------- CIFAR


def write_pickle(path, obj, protocol):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def fake_cifar10(root, rng, protocol=2, per_batch=2):
    rows, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        batch_labels = rng.integers(0, 10, size=per_batch).tolist()
        write_pickle(root / name, {b"batch_label": b"x", b"data": data, b"labels": batch_labels,
                                   b"filenames": [b"f.png"] * per_batch}, protocol)
        rows.append(data)
        labels.append(batch_labels)
    return rows, labels


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_parses_the_python_batches(tmp_path, protocol):
    rng = np.random.default_rng(0)
    rows, labels = fake_cifar10(tmp_path / "cifar-10-batches-py", rng, protocol)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.train_inputs.shape == (10, 3, 32, 32) and data.test_inputs.shape == (2, 3, 32, 32)
    assert data.input_shape == (3, 32, 32) and data.num_outputs == 10
    assert data.train_targets.tolist() == sum(labels[:5], [])
    assert data.test_targets.tolist() == labels[5]
    train_images = np.concatenate(rows[:5]).reshape(-1, 3, 32, 32).astype(np.float64)
    np.testing.assert_allclose(data.train_inputs.numpy(),
                               expected_standardized(train_images, train_images),
                               rtol=1e-5, atol=1e-6)
    test_images = rows[5].reshape(-1, 3, 32, 32).astype(np.float64)
    np.testing.assert_allclose(data.test_inputs.numpy(),
                               expected_standardized(train_images, test_images),
                               rtol=1e-5, atol=1e-6)
    # Channel c, row i, column j of an image is byte c*1024 + i*32 + j of its row; the recorded
    # normalization undoes the standardization.
    norm = data.metadata["normalization"]
    pixel = float(data.train_inputs[3, 2, 5, 7]) * norm["std"][2] + norm["mean"][2]
    assert pixel == pytest.approx(rows[1][1, 2 * 1024 + 5 * 32 + 7], abs=1e-3)
    # The batch files straight in data_dir work too.
    assert_same_task(data, load_dataset("cifar10", data_dir=tmp_path / "cifar-10-batches-py"))
    limited = load_dataset("cifar10", data_dir=tmp_path, limit=3)
    assert torch.equal(limited.train_inputs, data.train_inputs[:3])


def test_cifar10_missing_files_are_named(tmp_path):
    fake_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(0))
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10", data_dir=tmp_path)
    message = str(info.value)
    assert "data_batch_1" in message and "test_batch" in message
    assert "missing from" in message and message.endswith("data_batch_3")
    assert str(tmp_path / "cifar-10-batches-py") in message
    with pytest.raises(ValueError, match="pass data_dir.*cifar-10-batches-py"):
        load_dataset("cifar10")


def test_cifar_corrupt_files_are_refused(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    fake_cifar10(root, np.random.default_rng(0))
    (root / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="test_batch is not a readable CIFAR pickle"):
        load_dataset("cifar10", data_dir=tmp_path)
    # A pickle that would call a function is refused, not run.
    (root / "test_batch").write_bytes(b"cbuiltins\nlen\n(S'ab'\ntR.")
    with pytest.raises(ValueError, match="refusing to load builtins.len"):
        load_dataset("cifar10", data_dir=tmp_path)
    write_pickle(root / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, 2)
    with pytest.raises(ValueError, match=r"shape \(N, 3072\)"):
        load_dataset("cifar10", data_dir=tmp_path)
    out_of_range = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}
    write_pickle(root / "test_batch", out_of_range, 2)
    with pytest.raises(ValueError, match=r"labels .* must lie in \[0, 10\)"):
        load_dataset("cifar10", data_dir=tmp_path)
    write_pickle(root / "test_batch", {b"data": np.zeros((2, 3072), np.uint8)}, 2)
    with pytest.raises(ValueError, match="b'labels'"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-100-python"
    content = {}
    for name, n in (("train", 4), ("test", 3)):
        content[name] = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                         b"fine_labels": rng.integers(0, 100, size=n).tolist(),
                         b"coarse_labels": rng.integers(0, 20, size=n).tolist()}
        write_pickle(root / name, content[name], 2)
    fine = load_dataset("cifar100", data_dir=tmp_path)
    assert fine.num_outputs == 100 and fine.train_inputs.shape == (4, 3, 32, 32)
    assert fine.train_targets.tolist() == content["train"][b"fine_labels"]
    coarse = load_dataset("cifar100", data_dir=tmp_path, labels="coarse")
    assert coarse.num_outputs == 20
    assert coarse.test_targets.tolist() == content["test"][b"coarse_labels"]
    assert torch.equal(fine.train_inputs, coarse.train_inputs)
    (root / "test").unlink()
    with pytest.raises(ValueError, match="needs the files train, test.*missing from.*test"):
        load_dataset("cifar100", data_dir=tmp_path)


# ----------------------------------------------------------------------------- MNIST / IDX


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def fake_idx(directory, rng, size=(28, 28), counts=(5, 3), compress=False):
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in zip(("train", "t10k"), counts):
        images = rng.integers(0, 256, size=(n, *size), dtype=np.uint8)
        arrays[f"{prefix}-images-idx3-ubyte"] = images
        arrays[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, size=n, dtype=np.uint8)
    for name, array in arrays.items():
        raw = idx_bytes(array)
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)
    return arrays


def test_parse_idx_reads_big_endian_headers_and_values():
    values = (np.arange(6).reshape(2, 3) / 4).astype(">f4")
    np.testing.assert_array_equal(parse_idx(idx_bytes(values, 0x0D)), values)
    ints = np.array([1, -2, 70000], dtype=">i4")
    np.testing.assert_array_equal(parse_idx(idx_bytes(ints, 0x0C)), ints)
    with pytest.raises(ValueError, match="first two bytes"):
        parse_idx(b"\x01\x00\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="type code 0x07"):
        parse_idx(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="implies 13"):
        parse_idx(idx_bytes(np.zeros(5, np.uint8))[:-1] + b"")


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_parses_idx_files(tmp_path, compress):
    arrays = fake_idx(tmp_path, np.random.default_rng(2), compress=compress)
    data = load_dataset("mnist", data_dir=tmp_path)
    assert data.train_inputs.shape == (5, 1, 28, 28) and data.test_inputs.shape == (3, 1, 28, 28)
    assert data.train_targets.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.test_targets.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    train = arrays["train-images-idx3-ubyte"][:, None].astype(np.float64)
    np.testing.assert_allclose(data.train_inputs.numpy(), expected_standardized(train, train),
                               rtol=1e-5, atol=1e-6)
    test = arrays["t10k-images-idx3-ubyte"][:, None].astype(np.float64)
    np.testing.assert_allclose(data.test_inputs.numpy(), expected_standardized(train, test),
                               rtol=1e-5, atol=1e-6)


def test_fashion_mnist_reads_torchvision_layout_and_any_image_size(tmp_path):
    arrays = fake_idx(tmp_path / "FashionMNIST" / "raw", np.random.default_rng(3), size=(4, 6))
    data = load_dataset("fashion-mnist", data_dir=tmp_path, limit=2)
    assert data.input_shape == (1, 4, 6) and data.train_inputs.shape == (2, 1, 4, 6)
    assert data.train_targets.tolist() == arrays["train-labels-idx1-ubyte"][:2].tolist()


def test_mnist_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ValueError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(info.value)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in message
    assert str(tmp_path) in message and ".gz" in message
    fake_idx(tmp_path, np.random.default_rng(4))
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte holds 10 bytes"):
        load_dataset("mnist", data_dir=tmp_path)
    labels.write_bytes(idx_bytes(np.zeros(2, np.uint8)))
    with pytest.raises(ValueError, match=r"labels of shape \(2,\) for 3 images"):
        load_dataset("mnist", data_dir=tmp_path)
    labels.unlink()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a valid gzip file"):
        load_dataset("mnist", data_dir=tmp_path)


# ----------------------------------------------------------------------------- all embedded


@pytest.mark.parametrize("name", ["digits", "synthetic", "chars"])
def test_embedded_sets_are_deterministic_and_describable(name):
    a = load_dataset(name, seed=5)
    assert_same_task(a, load_dataset(name, seed=5))
    described = json.loads(json.dumps(a.describe()))
    assert described["num_train"] == a.num_train and described["kind"] == a.kind

"""The experiments' problem, starting point and measurements, against independent answers."""

from __future__ import annotations

import pytest
import torch

from samhess.curvature import dense_hessian
from samhess.errors import DivergenceError, RunFileError
from samhess.experiments.trajectories import interpolating
from samhess.experiments.trajectories.measures import (
    BounceMeasure, CurvatureMeasure, SharpnessMeasure,
)
from samhess.experiments.trajectories.problem import build_problem

from .conftest import flip_a_bit_of_the_largest_tensor

START = {"examples": 16, "width": 4, "seed": 3, "interpolation_lr": 0.5,
         "interpolation_loss": 5e-2, "interpolation_max_steps": 5000}


@pytest.fixture(scope="module")
def problem():
    return build_problem(16, 4, 3)


def test_the_problem_is_a_one_hot_regression_of_digits(problem):
    assert problem.inputs.shape == (16, 1, 8, 8) and problem.inputs.dtype == torch.float64
    assert torch.equal(problem.targets.sum(dim=1), torch.ones(16, dtype=torch.float64))
    model = problem.new_model()
    assert sum(p.numel() for p in model.parameters()) == 64 * 4 + 4 + 4 * 10 + 10
    assert all(p.dtype == torch.float64 for p in model.parameters())
    again = problem.new_model()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    outputs = model(problem.inputs)
    expected = ((outputs - problem.targets) ** 2).mean()
    loss = problem.loss_fn(outputs, problem.targets)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-14)


def _dense(problem, model):
    matrix = dense_hessian(model, problem.loss_fn, problem.data)
    values, vectors = torch.linalg.eigh(matrix)
    loss = problem.loss_fn(model(problem.inputs), problem.targets)
    gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, model.parameters())])
    return matrix, values, vectors, gradient, float(loss.detach())


def test_curvature_records_match_the_dense_hessian(problem):
    model = problem.new_model()
    matrix, values, _, gradient, loss = _dense(problem, model)
    record = CurvatureMeasure(problem, seed=0)(model, step=0)
    assert record["train_loss"] == pytest.approx(loss, rel=1e-12)
    assert record["lambda_max"] == pytest.approx(float(values[-1]), rel=1e-8)
    assert record["hessian_trace"] == pytest.approx(float(matrix.trace()), rel=1e-10)
    assert record["grad_norm"] == pytest.approx(float(gradient.norm()), rel=1e-10)
    sharpness = SharpnessMeasure(problem, seed=0)(model, step=0)
    assert sharpness == {key: record[key] for key in sharpness}


def test_bounce_records_keep_the_sign_of_v1_continuous(problem):
    model = problem.new_model()
    _, values, vectors, gradient, _ = _dense(problem, model)
    top = vectors[:, -1]
    measure = BounceMeasure(problem, seed=0, eigenvector_every=5)
    for previous in (top, -top):
        # a recomputation (step 5) orients the new v_1 like the one before it
        measure.load_state_dict({"top_vector": previous, "top_value": None})
        record = measure(model, step=5)
        assert record["gradient_on_top_eigenvector"] == pytest.approx(
            float(gradient @ previous), rel=1e-6)
        assert record["lambda_max"] == pytest.approx(float(values[-1]), rel=1e-8)
    # between recomputations v_1 is kept as it is
    measure.load_state_dict({"top_vector": -top, "top_value": 1.5})
    record = measure(model, step=6)
    assert record["lambda_max"] == 1.5
    assert record["gradient_on_top_eigenvector"] == pytest.approx(float(-gradient @ top))


def _plain_descent(problem, lr, target):
    """Gradient descent written out by hand: the weights where the loss first reaches target."""
    model = problem.new_model()
    params = list(model.parameters())
    for step in range(100_000):
        loss = problem.loss_fn(model(problem.inputs), problem.targets)
        if float(loss.detach()) <= target:
            return step, [p.detach().clone() for p in params]
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
    raise AssertionError("did not converge")


def test_the_interpolating_point_is_plain_gradient_descent_and_is_cached(problem, tmp_path,
                                                                        monkeypatch):
    settings = {**START, "cache_dir": str(tmp_path)}
    point = interpolating.interpolating_point(problem, settings, quiet=True)
    steps, weights = _plain_descent(problem, START["interpolation_lr"],
                                    START["interpolation_loss"])
    assert point.steps == steps > 0
    assert point.loss <= START["interpolation_loss"]
    model = problem.new_model()
    model.load_state_dict(point.state)
    for mine, theirs in zip(model.parameters(), weights):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)
    assert len(list(tmp_path.glob("interpolating-*.pt"))) == 1

    def no_descent(*args, **kwargs):
        raise AssertionError("the cached point should have been read")

    monkeypatch.setattr(interpolating, "_descend", no_descent)
    cached = interpolating.interpolating_point(problem, settings, quiet=True)
    assert cached.steps == point.steps and cached.loss == point.loss
    assert all(torch.equal(cached.state[k], point.state[k]) for k in point.state)
    # another target is another point, with its own cache file
    with pytest.raises(AssertionError, match="cached point should have been read"):
        interpolating.interpolating_point(problem, {**settings, "interpolation_loss": 6e-2})


def test_a_cache_file_of_other_settings_is_refused(problem, tmp_path):
    settings = {**START, "cache_dir": str(tmp_path)}
    interpolating.interpolating_point(problem, settings, quiet=True)
    (path,) = tmp_path.glob("interpolating-*.pt")
    stored = torch.load(path, weights_only=True)
    stored["key"]["interpolation_lr"] = 0.25
    torch.save(stored, path)
    with pytest.raises(ValueError, match="does not hold the point of these settings"):
        interpolating.interpolating_point(problem, settings, quiet=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RunFileError, match=r"is corrupt \(BadZipFile: File is not a zip file\); "
                                           "delete it to compute it again"):
        interpolating.interpolating_point(problem, settings, quiet=True)


def test_a_flipped_bit_in_the_cached_point_is_caught_by_its_crc(problem, tmp_path):
    settings = {**START, "cache_dir": str(tmp_path)}
    interpolating.interpolating_point(problem, settings, quiet=True)
    (path,) = tmp_path.glob("interpolating-*.pt")
    original = torch.load(path, weights_only=True)["state"]
    member = flip_a_bit_of_the_largest_tensor(path)
    # torch loads the damaged file as another point without a word ...
    damaged = torch.load(path, weights_only=True)["state"]
    assert any(not torch.equal(damaged[name], original[name]) for name in original)
    # ... the CRC check does not.
    with pytest.raises(RunFileError) as info:
        interpolating.interpolating_point(problem, settings, quiet=True)
    assert str(info.value) == (f"cached point {path} is corrupt (the CRC-32 of its member "
                               f"{member} does not match its content); delete it to compute it "
                               "again")


def test_a_descent_that_cannot_reach_the_loss_says_which_settings_to_change(problem, tmp_path):
    settings = {**START, "cache_dir": str(tmp_path), "interpolation_max_steps": 3}
    with pytest.raises(ValueError, match="did not reach --interpolation-loss 0.05 in "
                                         "--interpolation-max-steps 3"):
        interpolating.interpolating_point(problem, settings, quiet=True)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DivergenceError, match="diverged at step"):
        interpolating.interpolating_point(problem, {**settings, "interpolation_lr": 1e6,
                                                    "interpolation_max_steps": 1000})


def test_the_cache_lives_where_the_settings_or_the_environment_say(monkeypatch, tmp_path):
    assert interpolating.cache_directory(str(tmp_path)) == tmp_path
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert interpolating.cache_directory(None) == tmp_path / "xdg" / "samhess"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert interpolating.cache_directory(None) == tmp_path / "home" / ".cache" / "samhess"

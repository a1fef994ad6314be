"""Run configuration: defaults, files, flags overriding files, and one-line errors."""

from __future__ import annotations

import pytest

from samhess.experiments.config import (
    CompareConfig,
    RunConfig,
    build_compare_config,
    build_run_config,
    parse_optimizer_list,
    read_config_file,
)


def test_defaults_resolve_per_optimizer():
    sgd = build_run_config({}, {"optimizer": "sgd"})
    adamw = build_run_config({}, {"optimizer": "adamw"})
    asam = build_run_config({}, {"optimizer": "asam"})
    assert (sgd.lr, sgd.rho, sgd.model) == (0.1, 0.05, "mlp")
    assert adamw.lr == 1e-3
    assert asam.rho == 0.5
    assert sgd.checkpoint_every == sgd.track_every


def test_flags_override_file_and_file_overrides_defaults(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('optimizer = "sam"\nsteps = 40\nrho = 0.1\nweight-decay = 0.001\n')
    config = build_run_config(read_config_file(path), {"steps": 12})
    assert (config.optimizer, config.steps, config.rho) == ("sam", 12, 0.1)
    assert config.weight_decay == 0.001
    assert config.batch_size == RunConfig().batch_size


def test_yaml_and_toml_give_the_same_config(tmp_path):
    toml = tmp_path / "a.toml"
    toml.write_text('optimizer = "ire"\nkappa = 2\ngamma = 0.6\ntaylor_rhos = [0.01, 0.1]\n')
    yaml = tmp_path / "a.yaml"
    yaml.write_text("optimizer: ire\nkappa: 2\ngamma: 0.6\ntaylor_rhos: [0.01, 0.1]\n")
    from_toml = build_run_config(read_config_file(toml), {})
    from_yaml = build_run_config(read_config_file(yaml), {})
    assert from_toml == from_yaml
    assert from_toml.kappa == 2.0 and isinstance(from_toml.kappa, float)
    assert from_toml.taylor_rhos == (0.01, 0.1)


@pytest.mark.parametrize(
    ("values", "error", "fragment"),
    [
        ({"stepz": 3}, ValueError, "unknown key 'stepz' (did you mean 'steps'?)"),
        ({"steps": "ten"}, TypeError, "steps = 'ten' has the wrong type: expected an integer"),
        ({"steps": True}, TypeError, "steps = True has the wrong type"),
        ({"steps": 0}, ValueError, "steps = 0 is invalid: must be >= 1"),
        ({"lr": -0.1}, ValueError, "lr = -0.1 is invalid: must be > 0"),
        ({"gamma": 1.0}, ValueError, "gamma = 1.0 is invalid: must lie in the open interval"),
        ({"momentum": 1.5}, ValueError, "momentum = 1.5 is invalid: must be < 1"),
        ({"optimizer": "adam"}, ValueError, "optimizer = 'adam' is invalid: must be one of sgd"),
        ({"dataset": "imagenet"}, ValueError, "dataset = 'imagenet' is invalid: must be one of"),
        ({"model": "gpt5"}, ValueError, "model = 'gpt5' is invalid: must be one of"),
        ({"taylor_rhos": [0.1]}, ValueError, "taylor_rhos = [0.1] is invalid: needs at least 2"),
        ({"taylor_rhos": [0.1, float("inf")]}, ValueError, "every element must be finite"),
        ({"taylor_rhos": [0.1, 20]}, ValueError, "every element must be <= 10"),
        ({"seed": 2**32}, ValueError, "seed = 4294967296 is invalid: must be < 4294967296"),
        ({"trace_matvecs": 2}, ValueError, "trace_matvecs = 2 is invalid: must be >= 3"),
        ({"optimizers": "sgd"}, ValueError, "optimizers applies to `samhess compare` only"),
    ],
)
def test_config_file_errors_name_key_and_value(values, error, fragment):
    with pytest.raises(error) as info:
        build_run_config(values, {})
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_flag_errors_name_the_flag():
    with pytest.raises(ValueError, match=r"^--track-every 0 is invalid: must be >= 1$"):
        build_run_config({}, {"track_every": 0})


def test_a_hyperparameter_flag_the_optimizer_does_not_read_is_refused():
    with pytest.raises(ValueError, match=r"^--momentum 0.9 does not apply to optimizer 'adamw'$"):
        build_run_config({}, {"optimizer": "adamw", "momentum": 0.9})
    with pytest.raises(ValueError, match="--rho 0.1 does not apply to any of the optimizers "
                                         "sgd, ire"):
        build_compare_config({}, {"optimizers": "sgd,ire", "rho": 0.1})
    # a config file may hold hyperparameters of other optimizers
    assert build_run_config({"rho": 0.2}, {"optimizer": "sgd"}).rho == 0.2
    # in a comparison a flag applies to the members that read it
    compare = build_compare_config({}, {"optimizers": "sgd,adamw", "momentum": 0.9})
    assert compare.run_config("sgd", 0).momentum == 0.9


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("bad.toml", "steps = = 3", "is not valid TOML"),
        ("bad.yaml", "steps: [1, 2", "is not valid YAML"),
        ("list.yaml", "- 1\n- 2\n", "must hold a table"),
        ("nested.toml", "[run]\nsteps = 3\n", "'run' is a section"),
        ("config.json", "{}", "must end in .toml, .yaml or .yml"),
    ],
)
def test_malformed_files_are_one_line_errors(tmp_path, name, text, fragment):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        read_config_file(path)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_config_file(tmp_path / "absent.toml")


def test_compare_config_merges_and_resolves_members(tmp_path):
    path = tmp_path / "compare.yaml"
    path.write_text("optimizers: [sgd, adamw]\nseeds: 2\nsteps: 20\n")
    config = build_compare_config(read_config_file(path), {"optimizers": "sam,admire", "steps": 8})
    assert config.optimizers == ("sam", "admire") and config.seeds == 2
    member = config.run_config("admire", 1)
    assert (member.optimizer, member.seed, member.steps, member.lr) == ("admire", 1, 8, 1e-3)
    assert config.run_config("sam", 0).lr == 0.1
    assert CompareConfig().optimizers == ("sgd", "sam", "ire", "sam-ire")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("sgd,,sam", "needs comma-separated optimizer names"), ("sgd,lion", "'lion' is invalid"),
     ("sgd,sgd", "names an optimizer twice"), (3, "wrong type")],
)
def test_optimizer_list_errors(value, fragment):
    with pytest.raises((ValueError, TypeError)) as info:
        parse_optimizer_list(value, "flags")
    assert fragment in str(info.value)


def test_compare_refuses_per_run_keys():
    with pytest.raises(ValueError, match="seed is set per member run"):
        build_compare_config({"seed": 3}, {})


def test_config_round_trips_through_its_dict():
    config = build_run_config({}, {"optimizer": "sam-ire", "kappa": 3.0})
    assert RunConfig.from_dict(config.to_dict()) == config


def test_yaml_reads_exponent_numbers_as_floats(tmp_path):
    # YAML 1.1 (PyYAML's default) would leave 1e-2 and 5E-3 strings; YAML 1.2 and TOML do not.
    path = tmp_path / "run.yaml"
    path.write_text("optimizer: admire\nlr: 1e-2\nrho: 5E-3\nkappa: 1.0e+1\nweight_decay: 1e0\n"
                    "dataset: digits\n")
    values = read_config_file(path)
    assert values["lr"] == 0.01 and values["rho"] == 0.005 and values["kappa"] == 10.0
    assert values["weight_decay"] == 1.0 and values["dataset"] == "digits"
    config = build_run_config(values, {})
    assert (config.lr, config.rho, config.kappa) == (0.01, 0.005, 10.0)
    toml = tmp_path / "run.toml"
    toml.write_text('optimizer = "admire"\nlr = 1e-2\nrho = 5E-3\nkappa = 1.0e+1\n'
                    'weight_decay = 1e0\ndataset = "digits"\n')
    assert build_run_config(read_config_file(toml), {}) == config


def test_tracking_defaults_follow_the_task():
    # 4096 tokens of 64-character sequences for the language model; fewer examples and trace
    # products for the large models; the original budget for the small ones; flags win.
    chars = build_run_config({}, {"optimizer": "admire", "dataset": "chars"})
    assert (chars.tracking_batch_size, chars.trace_matvecs) == (4096 // 64, 15)
    digits = build_run_config({}, {"optimizer": "sgd"})
    assert (digits.tracking_batch_size, digits.trace_matvecs) == (256, 30)
    vit = build_run_config({}, {"optimizer": "sgd", "dataset": "cifar10", "model": "vit"})
    assert (vit.tracking_batch_size, vit.trace_matvecs) == (64, 15)
    given = build_run_config({}, {"optimizer": "sgd", "dataset": "chars",
                                  "tracking_batch_size": 8, "trace_matvecs": 9})
    assert (given.tracking_batch_size, given.trace_matvecs) == (8, 9)
    compare = build_compare_config({}, {"dataset": "chars", "optimizers": "adamw,admire"})
    assert compare.run_config("admire", 0).tracking_batch_size == 64


def test_per_layer_and_landscape_defaults_follow_the_task():
    # per-layer curvature at every second record, off for the costly models; the landscape's
    # grid smaller for them
    digits = build_run_config({}, {"optimizer": "sgd", "track_every": 25})
    assert (digits.layer_track_every, digits.landscape_points) == (50, 21)
    chars = build_run_config({}, {"optimizer": "admire", "dataset": "chars"})
    assert (chars.layer_track_every, chars.landscape_points) == (0, 11)
    given = build_run_config({}, {"optimizer": "sgd", "dataset": "chars",
                                  "layer_track_every": 100, "landscape_points": 0})
    assert (given.layer_track_every, given.landscape_points) == (100, 0)
    compare = build_compare_config({}, {"optimizers": "sgd,sam", "track_every": 10})
    assert compare.run_config("sam", 1).layer_track_every == 20


@pytest.mark.parametrize(("flags", "fragment"), [
    ({"layer_track_every": 70}, "--layer-track-every 70 is invalid: it must be a multiple of "
                                "--track-every 50"),
    ({"layer_track_every": -1}, "--layer-track-every -1 is invalid: must be >= 0"),
    ({"landscape_points": 2}, "--landscape-points 2 is invalid: must be 0 (no slices) or >= 3"),
    ({"landscape_radius": 0}, "--landscape-radius 0.0 is invalid: must be > 0"),
])
def test_per_layer_and_landscape_settings_are_checked(flags, fragment):
    with pytest.raises(ValueError) as error:
        build_run_config({}, {"optimizer": "sgd", **flags})
    assert fragment in str(error.value)

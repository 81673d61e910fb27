"""The typed config: YAML + dotted overrides, errors that name the key, dump and reload."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from train.config import ConfigError, flatten, from_dict, load_config, to_dict, to_yaml


@dataclass(kw_only=True)
class Trainer:
    lr: float = 0.005
    epochs: int = 10
    compile: bool = False
    milestones: tuple[float, ...] = (0.5, 0.75)


@dataclass(kw_only=True)
class Data:
    store: str  # required
    frames: int = 8
    split: Literal["train", "val"] = "train"
    limit: int | None = None


@dataclass(kw_only=True)
class Config:
    name: str = "run"
    data: Data
    trainer: Trainer = field(default_factory=Trainer)


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_build_typed_config(tmp_path):
    path = write(tmp_path, "data:\n  store: /data/k400\ntrainer:\n  epochs: 3\n")
    cfg = load_config(Config, path, ["trainer.lr=0.01", "data.limit=5", "name=123",
                                     "trainer.milestones=[0.3, 0.6]", "trainer.compile=true"])
    assert cfg.data.store == "/data/k400" and cfg.trainer.epochs == 3
    assert cfg.trainer.lr == 0.01 and isinstance(cfg.trainer.lr, float)
    assert cfg.data.limit == 5
    assert cfg.name == "123"  # a string field keeps the text, not the YAML int
    assert cfg.trainer.milestones == (0.3, 0.6) and cfg.trainer.compile is True


def test_int_is_accepted_for_float_and_null_for_optional(tmp_path):
    cfg = load_config(Config, write(tmp_path, "data: {store: s, limit: null}\ntrainer: {lr: 1}\n"))
    assert cfg.trainer.lr == 1.0 and isinstance(cfg.trainer.lr, float) and cfg.data.limit is None


@pytest.mark.parametrize("text, overrides, key", [
    ("data: {store: s}\ntrainer: {lrr: 0.1}\n", [], "trainer.lrr"),
    ("data: {store: s}\nbogus: 1\n", [], "bogus"),
    ("data: {store: s}\n", ["trainer.lrr=0.1"], "trainer.lrr"),
    ("data: {store: s}\n", ["data.store.x=1"], "data.store"),
])
def test_unknown_key_names_the_key(tmp_path, text, overrides, key):
    with pytest.raises(ConfigError, match=rf"'{key}'"):
        load_config(Config, write(tmp_path, text), overrides)


def test_unknown_key_suggests_the_close_one(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        load_config(Config, write(tmp_path, "data: {store: s}\n"), ["trainer.lrr=1"])


@pytest.mark.parametrize("text, overrides, key", [
    ("data: {store: s}\ntrainer: {epochs: ten}\n", [], "trainer.epochs"),
    ("data: {store: s}\n", ["trainer.lr=fast"], "trainer.lr"),
    ("data: {store: s}\n", ["trainer.epochs=2.5"], "trainer.epochs"),
    ("data: {store: s}\n", ["trainer.compile=1"], "trainer.compile"),
    ("data: {store: s, split: test}\n", [], "data.split"),
    ("data: {store: s}\ntrainer: {milestones: [0.5, x]}\n", [], r"trainer.milestones\[1\]"),
    ("data: {store: s}\ntrainer: 3\n", [], "trainer"),
])
def test_wrong_type_names_the_key(tmp_path, text, overrides, key):
    with pytest.raises(ConfigError, match=rf"'{key}': expected"):
        load_config(Config, write(tmp_path, text), overrides)


def test_missing_required_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'data.store' is required"):
        load_config(Config, write(tmp_path, "data: {frames: 8}\n"))


def test_bad_file_and_bad_override_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Config, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Config, write(tmp_path, "data: [\n"))
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(Config, write(tmp_path, "data: {store: s}\n"), ["trainer.lr"])


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load_config(Config, write(tmp_path, "data: {store: s3://b/k}\n"), ["trainer.epochs=4"])
    again = load_config(Config, write(tmp_path, to_yaml(cfg)))
    assert again == cfg
    assert from_dict(Config, to_dict(cfg)) == cfg
    flat = flatten(cfg)
    assert flat["trainer.epochs"] == 4 and flat["data.store"] == "s3://b/k"
    assert flat["trainer.milestones"] == [0.5, 0.75]


def test_a_yaml_builds_on_its_base(tmp_path):
    """``_base_`` (a path beside the file): sections merge key by key, a list is replaced whole, and
    a base may have a base of its own."""
    (tmp_path / "root.yaml").write_text("data: {store: s, frames: 8}\ntrainer: {epochs: 10, milestones: [0.2, 0.4]}\n")
    (tmp_path / "mid.yaml").write_text("_base_: root.yaml\ntrainer: {lr: 0.1}\n")
    (tmp_path / "top.yaml").write_text("_base_: mid.yaml\ndata: {frames: 32}\ntrainer: {milestones: [0.9]}\n")
    cfg = load_config(Config, tmp_path / "top.yaml", ["trainer.epochs=4"])
    assert (cfg.data.store, cfg.data.frames) == ("s", 32)
    assert (cfg.trainer.epochs, cfg.trainer.lr, cfg.trainer.milestones) == (4, 0.1, (0.9,))


@pytest.mark.parametrize("files, match", [
    ({"a.yaml": "_base_: b.yaml\n", "b.yaml": "_base_: a.yaml\n"}, "comes back to .*a.yaml"),
    ({"a.yaml": "_base_: missing.yaml\n"}, "missing.yaml does not exist .the _base_ of .*a.yaml"),
    ({"a.yaml": "_base_: [b.yaml]\n"}, "'_base_' must name one YAML file"),
])
def test_a_bad_base_is_named(tmp_path, files, match):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(Config, tmp_path / "a.yaml")


def test_a_tuple_of_the_wrong_length_names_its_key_and_the_length():
    @dataclass(kw_only=True)
    class Pair:
        mean: tuple[float, float] = (0.5, 0.5)

    for value in ("[1]", "[1, 2, 3]"):
        with pytest.raises(ConfigError, match=r"'mean': expected tuple\[float, float\], got list"):
            load_config(Pair, None, [f"mean={value}"])
    assert load_config(Pair, None, ["mean=[1, 2]"]).mean == (1.0, 2.0)

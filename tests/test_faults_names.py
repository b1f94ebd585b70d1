"""User-given names stay inside the store: every kind of name that escapes is refused in one line, before
Ray starts and before anything is written; a damaged shard's error names the shard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ray_ganime import config, export, images, runtime, shards, storage, tune
from ray_ganime.cli import main

REPO = Path(__file__).resolve().parents[1]
SWEEP = str(REPO / "configs" / "pix2pix_tv_sweep.yaml")

ESCAPING = ["../../escaped", "/abs/escaped", "sub/name", "back\\slash", ".hidden"]
CONTROL = ["nul\x00byte", "new\nline"]  # only where no YAML parse is in between
# Bare data set names; paths (/abs, ./rel, ../rel, ~) and URIs are used as given, as documented.
DATASETS = ["a/../../../escaped", "sub/name", "back\\slash", "nul\x00byte"]


def _cases():
    for name in ESCAPING + CONTROL:
        yield "run name", ["train", "--run-name", name]
        yield "sweep name", ["tune", "--resume", name]
    for name in ESCAPING:
        yield "run name", ["train", "--set", f"train.run_name={name}"]
        yield "sweep name", ["tune", SWEEP, "--name", name]
        yield "model name", ["tune", SWEEP, "--set", f"tune.export_name={name}"]
        yield "model name", ["export", "some/checkpoint", "--name", name]
    for name in DATASETS:
        yield "data set name", ["data", "synth", "--out", name, "--count", "2", "--size", "16"]
        yield "data set name", ["data", "ingest", "--layout", "folder", "SRC", name]
        yield "data set name", ["data", "inspect", name]
        yield "data set name", ["evaluate", "--model", "some/checkpoint", "--data", name]
        if "\x00" not in name:
            yield "data set name", ["train", "--set", f"data.uri={name}"]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """A store two levels down, so that '../../x' would land inside tmp_path where it can be seen; Ray
    must not start at all (a tripwire, not a stand-in: every case fails before it would be needed)."""
    def ray_started(*args, **kwargs):
        raise AssertionError("Ray was started before the name was checked")

    monkeypatch.setattr(runtime, "init_ray", ray_started)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(images.encode_png(np.zeros((8, 8, 3), np.uint8)))
    root = tmp_path / "a" / "b" / "store"
    root.mkdir(parents=True)
    return root


@pytest.mark.parametrize("what, argv", list(_cases()), ids=repr)
def test_escaping_names_are_refused_in_one_line_and_nothing_is_written(what, argv, store, tmp_path, capsys):
    argv = [str(tmp_path / "src") if a == "SRC" else a for a in argv]
    before = _tree(tmp_path)
    assert main([*argv, "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ganime: error: ") and f"invalid {what} " in err, err
    assert err.count("\n") == 1, err  # one line, no traceback
    assert _tree(tmp_path) == before


BAD_NAMES = ["../x", "a/b", "a\\b", ".x", "", "a\x00b", "a\n", "x" * 129]
KEYS = {"train.run_name": "run name", "tune.name": "sweep name", "tune.export_name": "model name",
        "data.uri": "data set name"}
# A data.uri starting with '.' ('.x', '../x') is a relative path, used as given.
SCHEMA_CASES = [(key, name) for key in KEYS for name in BAD_NAMES if not (key == "data.uri" and name.startswith("."))]


@pytest.mark.parametrize("key, name", SCHEMA_CASES)
def test_the_config_schema_refuses_them_for_every_entry_point(key, name):
    what = KEYS[key]
    section, field = key.split(".")
    with pytest.raises(config.ConfigError, match=f"invalid {what} ") as caught:
        config.from_tree({section: {field: name}})
    assert "\n" not in str(caught.value).replace(repr(name), "")


def test_good_names_and_data_set_locations_resolve_where_documented(tmp_path):
    cfg = config.from_tree({"train": {"run_name": "pix2pix-tv_1.5"}, "tune": {"name": "Sweep-2"},
                            "data": {"uri": "anime-pairs"}, "store": {"uri": str(tmp_path)}})
    assert cfg.train.run_name == "pix2pix-tv_1.5" and cfg.tune.name == "Sweep-2"
    assert cfg.dataset_uri() == str(tmp_path / "datasets" / "anime-pairs")
    for given, expected in [("/data/x", "/data/x"), ("s3://bucket/sets/x", "s3://bucket/sets/x"),
                            ("file:///data/y", "/data/y"), ("~/sets/z", str(Path.home() / "sets" / "z"))]:
        assert config.dataset_uri(given, str(tmp_path)) == expected


def test_one_name_rule_for_models_and_tune_trials(tmp_path):
    from ray.tune.experiment import Trial

    # the old pattern ended in '$', which let a final newline through
    with pytest.raises(export.PackageError, match="invalid model name"):
        export.package_uri(str(tmp_path), "model\n")
    assert export.package_uri(str(tmp_path), "model-1") == str(tmp_path / "models" / "model-1")
    with pytest.raises(ValueError, match="invalid trial name"):
        tune.trial_dirname(Trial("__fake", trial_id="../x", stub=True))
    trial = Trial("__fake", stub=True)
    assert tune.trial_dirname(trial) == trial.trial_id
    with pytest.raises(ValueError, match="invalid sweep name"):
        tune.sweep_uri(str(tmp_path), "../x")


def test_a_truncated_shard_is_named_in_one_line(tmp_path, capsys):
    uri = str(tmp_path / "ds")
    with shards.ShardWriter(uri, "folder") as w:
        for i in range(3):
            w.write({"id": f"i{i}", "split": "train", "width": 8, "height": 8, "source": "t",
                     "image": images.encode_png(np.full((8, 8, 3), i, np.uint8))})
    shard = tmp_path / "ds" / "train" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-40])

    with pytest.raises(storage.StorageError) as caught:
        shards.read_rows(uri)
    assert str(caught.value).startswith(f"{shard}: ") and "\n" not in str(caught.value)

    assert main(["data", "inspect", uri, "--out", str(tmp_path / "sheet.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ganime: error: {shard}: ") and err.count("\n") == 1

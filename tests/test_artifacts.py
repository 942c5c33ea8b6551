import json

import pytest

from llmchain.artifacts import atomic_dir, atomic_write_text, read_manifest, sha256_path, write_manifest
from llmchain.config import StageConfig, load_config
from llmchain.errors import ConfigError


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        from llmchain.artifacts import atomic_path

        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    d = tmp_path / "model"
    with atomic_dir(d) as tmp:
        (tmp / "w.bin").write_bytes(b"1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(d) as tmp:
            (tmp / "w.bin").write_bytes(b"2")
            raise KeyboardInterrupt
    assert (d / "w.bin").read_bytes() == b"1"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["model"]


def test_manifest_records_input_hashes(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello")
    m = write_manifest(tmp_path / "out", "documents", inputs={"raw": src}, counts={"docs": 1})
    assert m["inputs"]["raw"]["sha256"] == sha256_path(src)
    assert read_manifest(tmp_path / "out")["counts"] == {"docs": 1}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["kind"] == "documents"


class _Cfg(StageConfig):
    lr: float = 1e-3
    steps: int = 10


def test_config_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.5\nsteps: 3\n")
    c = load_config(_Cfg, f, steps=7)
    assert (c.lr, c.steps) == (0.5, 7)


def test_config_unknown_field_names_file_and_field(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.5\nstepz: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: field 'stepz'"):
        load_config(_Cfg, f)


def test_config_bad_yaml_names_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: [0.5\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+: invalid YAML"):
        load_config(_Cfg, f)


def test_finished_artifacts_get_ordinary_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        with atomic_dir(tmp_path / "d") as tmp:
            atomic_write_text(tmp / "inner.json", "{}")
    finally:
        os.umask(mask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "d" / "inner.json").stat().st_mode & 0o777 == 0o644

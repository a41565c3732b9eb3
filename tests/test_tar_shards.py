"""Generated shards: member order, fixed metadata, atomic appearance."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from xares.data.tar_shards import shard_writer
from xares.suites.mini.writer import ensure_mini_suite
from xares.suites.smoke import ensure_smoke_suite


def members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def test_samples_are_written_as_given_in_order(tmp_path):
    path = tmp_path / "d" / "s.tar"
    with shard_writer(path) as shard:
        shard.write({"__key__": "b_1", "json": b'{"label": "x"}', "flac": b"\x00audio"})
        shard.write({"__key__": "a_0", "flac": b"more", "json": b"{}"})
    assert members(path) == [
        ("b_1.flac", b"\x00audio"),
        ("b_1.json", b'{"label": "x"}'),
        ("a_0.flac", b"more"),
        ("a_0.json", b"{}"),
    ]
    with tarfile.open(path) as tar:
        info = tar.getmembers()[0]
    assert (info.uname, info.gname, info.mtime, info.mode) == (
        "xares",
        "xares",
        1_700_000_000,
        0o644,
    )
    assert [p.name for p in path.parent.iterdir()] == ["s.tar"]


def test_a_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "s.tar"
    with pytest.raises(ValueError, match="bytes"), shard_writer(path) as shard:
        shard.write({"__key__": "a", "flac": b"ok"})
        shard.write({"__key__": "b", "json": {"not": "bytes"}})
    assert list(tmp_path.iterdir()) == []


def test_smoke_suite_is_byte_identical_across_generations(tmp_path):
    first = ensure_smoke_suite(tmp_path / "a", train=3, test=2)
    second = ensure_smoke_suite(tmp_path / "b", train=3, test=2)
    shards = sorted(p.relative_to(first) for p in first.rglob("*.tar"))
    assert len(shards) == 8
    assert shards == sorted(p.relative_to(second) for p in second.rglob("*.tar"))
    for shard in shards:
        assert (first / shard).read_bytes() == (second / shard).read_bytes()
    names = [name for name, _ in members(first / "melody/train/melody_train_000000.tar")]
    assert names == [f"melody_train_{i:05d}.{ext}" for i in (0, 1) for ext in ("flac", "json")]
    meta = dict(members(first / "pitch/test/pitch_test_000001.tar"))
    assert json.loads(meta["pitch_test_00001.json"]) == {"label": "mid"}


def test_mini_suite_is_byte_identical_across_generations(tmp_path):
    sizes = {"instrument": {"train": 3, "test": 2}}
    first = ensure_mini_suite(tmp_path / "a", size=sizes, progress=False)
    second = ensure_mini_suite(tmp_path / "b", size=sizes, progress=False)
    for split, count in sizes["instrument"].items():
        name = f"instrument/{split}/instrument_{split}_000000.tar"
        assert (first / name).read_bytes() == (second / name).read_bytes()
        keys = [n.rsplit(".", 1) for n, _ in members(first / name)]
        assert [ext for _, ext in keys] == ["flac", "json"] * count
        assert [k for k, _ in keys][::2] == [f"instrument_{split}_{i:06d}" for i in range(count)]

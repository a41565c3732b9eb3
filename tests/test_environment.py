"""The locked environment and the import-time check that torch and torchaudio load together."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.config import ROOT
from packaging.requirements import Requirement

from xares import _environment as env

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

# What torchaudio 2.11.1 beside torch 2.11.0 raised on import, verbatim but for the path.
UNDEFINED_SYMBOL = (
    "Could not load this library: /venv/lib/python3.11/site-packages/torchaudio/lib/"
    "libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace"
)


def _lock() -> dict:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def _locked_versions(name: str) -> set[str]:
    return {p["version"] for p in _lock()["package"] if p["name"] == name}


def _requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {r.name: r for r in map(Requirement, deps)}


def test_the_locked_pair_is_the_one_the_error_message_names():
    assert _locked_versions("torch") == {env.LOCKED_TORCH}
    assert _locked_versions("torchaudio") == {env.LOCKED_TORCHAUDIO}
    assert env.LOCKED_TORCH == env.LOCKED_TORCHAUDIO


def test_pyproject_ranges_cannot_resolve_a_mismatched_pair():
    reqs = _requirements()
    torch, torchaudio = reqs["torch"].specifier, reqs["torchaudio"].specifier
    # torchaudio 2.11.0 requires no torch at all and 2.11.1 only torch>=2.11, so any torch could
    # sit beside them: neither may be allowed. Every older torchaudio pins torch==its version.
    for unpinned in ("2.11.0", "2.11.1", "2.12.0"):
        assert unpinned not in torchaudio, unpinned
    assert env.LOCKED_TORCH in torch and env.LOCKED_TORCHAUDIO in torchaudio
    assert "2.4.0" in torchaudio and "2.10.0" in torchaudio  # still a range for own environments


def test_every_locked_file_has_a_hash_and_both_platforms_have_torch():
    lock = _lock()
    files = []
    for package in lock["package"]:
        files += package.get("wheels", []) + ([package["sdist"]] if "sdist" in package else [])
    assert files
    unhashed = [f["url"] for f in files if not f.get("hash", "").startswith("sha256:")]
    assert not unhashed
    torch = next(p for p in lock["package"] if p["name"] == "torch")
    names = [Path(w["url"]).name for w in torch["wheels"]]
    for python in ("cp310", "cp311", "cp312"):
        assert any(f"-{python}-" in n and "manylinux" in n and "x86_64" in n for n in names)
        assert any(f"-{python}-" in n and "macosx" in n and "arm64" in n for n in names)


def test_fix_command_keeps_a_pairable_torch_and_otherwise_names_the_locked_pair():
    assert env.fix_command("2.8.0") == 'pip install "torchaudio==2.8.0"'
    assert env.fix_command("2.6.0+cu124") == (
        'pip install "torchaudio==2.6.0" --index-url https://download.pytorch.org/whl/cu124'
    )
    locked = f'pip install "torch=={env.LOCKED_TORCH}" "torchaudio=={env.LOCKED_TORCHAUDIO}"'
    assert env.fix_command("2.11.0") == locked  # no torchaudio that pins it exists
    assert env.fix_command("2.3.1") == locked  # older than xares supports
    assert env.fix_command(None) == locked


def test_a_failed_native_load_becomes_one_message_with_both_versions(monkeypatch):
    versions = {"torch": "2.11.0", "torchaudio": "2.11.1"}
    monkeypatch.setattr(env, "_version", versions.get)

    def load(name):
        assert name == "torchaudio"
        raise OSError(UNDEFINED_SYMBOL)

    with pytest.raises(env.BrokenTorchPairError) as caught:
        env.check_torch_pair(load)
    message = str(caught.value)
    assert "torchaudio 2.11.1 does not load against the installed torch 2.11.0" in message
    assert "undefined symbol: torch_exception_get_what_without_backtrace" in message
    assert "`make install`" in message
    assert (
        f'pip install "torch=={env.LOCKED_TORCH}" "torchaudio=={env.LOCKED_TORCHAUDIO}"' in message
    )
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_loading_pair_passes():
    env.check_torch_pair()  # the environment the tests run in is the locked one
    env.check_torch_pair(lambda name: None)


def test_import_xares_stops_with_the_message_when_torchaudio_does_not_load(tmp_path):
    """A real interpreter with a torchaudio 2.11.1 that fails as the published one does."""
    fake = tmp_path / "site"
    (fake / "torchaudio").mkdir(parents=True)
    (fake / "torchaudio" / "__init__.py").write_text(f"raise OSError({UNDEFINED_SYMBOL!r})\n")
    dist = fake / "torchaudio-2.11.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torchaudio\nVersion: 2.11.1\n")
    code = textwrap.dedent(
        """
        import importlib.metadata as m
        assert m.version("torchaudio") == "2.11.1", m.version("torchaudio")
        import xares
        """
    )
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()
    assert any(
        line.startswith("xares._environment.BrokenTorchPairError: xares cannot start")
        for line in last
    )
    assert (
        f"torchaudio 2.11.1 does not load against the installed torch {env._version('torch')}"
        in proc.stderr
    )
    assert "make install" in proc.stderr
    assert "OSError" not in proc.stderr  # the raw error is summarised, not re-raised

"""A hub that accepts connections and never answers ends the run in seconds, with one error."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from helpers.config import FAST
from huggingface_hub import constants as hf_constants

import xares.data.download as download
from xares.data.shards import MissingShardError, resolve_shards
from xares.run.train import train
from xares.run.validation import check_data, check_run

REPO = "mispeech/xares_llm_data"
# The run must stop well inside this; before the probe it waited minutes per shard.
BOUND_S = 30


class SilentServer:
    """Accepts every connection on 127.0.0.1 and never sends a byte (a dead proxy, a black hole)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.connections.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def silent(monkeypatch, tmp_path):
    for name in ("HF_HUB_OFFLINE", "XARES_OFFLINE", "HF_HUB_ETAG_TIMEOUT", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(download, "_servers", {})
    server = SilentServer()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.close()


def within_bound(work):
    """``work()``'s exception or result, or a failure once it has run for ``BOUND_S``."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as error:  # handed to the test below
            outcome.append(error)

    started = time.perf_counter()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    assert not thread.is_alive(), f"still waiting on the silent hub after {BOUND_S} s"
    return outcome[0], time.perf_counter() - started


def test_silent_hub_ends_in_seconds_with_every_missing_shard(silent, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    cache = tmp_path / "cache"
    error, _ = within_bound(
        lambda: resolve_shards(
            ["ESC-50/train/f_{1..3}.tar", "ESC-50/test/*.tar"],
            REPO,
            task="esc-50",
            progress=False,
            cache_dir=cache,
        )
    )
    assert isinstance(error, MissingShardError), error
    assert [m.shard for m in error.missing] == [
        *(f"ESC-50/train/f_{i}.tar" for i in (1, 2, 3)),
        "ESC-50/test/*.tar",
    ]
    text = str(error)
    assert f"no usable answer from {silent.url}" in text
    assert "waiting up to 2 s, HF_HUB_ETAG_TIMEOUT" in text
    assert "make data TASK=esc-50" in text and "HF_ENDPOINT" in text
    assert not list(cache.rglob("*.lock"))


def test_a_challenge_run_against_a_silent_hub_stops_with_one_error(silent, make_cfg, tmp_path):
    """Track A's 30 datasets, 1 153 shards: one probe with huggingface_hub's default timeout
    (10 s), not its retries (minutes) for every shard."""
    cfg = make_cfg("task=task1", "encoder=mel")
    task = check_run(cfg)
    data_dir = tmp_path / "data"
    error, elapsed = within_bound(
        lambda: check_data(task, train=True, evaluate=True, data_dir=str(data_dir))
    )
    assert isinstance(error, MissingShardError), error
    assert len(error.missing) == 1153
    text = str(error)
    assert text.startswith("1153 shard(s) are missing (1153 remote, not fetched: no usable answer")
    assert "make data TASK=task1" in text and f"(now {silent.url})" in text
    assert f"waiting up to {hf_constants.HF_HUB_ETAG_TIMEOUT:g} s" in text
    assert not list(tmp_path.rglob("*.lock"))
    # The silent server was asked once, not once per dataset.
    assert len(silent.connections) == 1
    assert elapsed < BOUND_S


def test_a_later_run_asks_the_silent_hub_again(silent, tmp_path, monkeypatch):
    """The verdict is kept for one run's datasets, not for good: the network may come back."""
    clock = [1000.0]
    monkeypatch.setattr(download, "_now", lambda: clock[0])
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    for _ in range(2):
        with pytest.raises(MissingShardError):
            resolve_shards("a.tar", REPO, progress=False, cache_dir=tmp_path)
    assert len(silent.connections) == 1
    clock[0] += download.PROBE_KEPT_S + 1
    with pytest.raises(MissingShardError):
        resolve_shards("a.tar", REPO, progress=False, cache_dir=tmp_path)
    assert len(silent.connections) == 2


def test_fast_dev_run_against_a_silent_hub_ends_before_any_weights(
    silent, make_cfg, tmp_path, monkeypatch
):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built although the shards cannot be fetched")

    monkeypatch.setattr("xares.run.pipeline.build_model", refuse)
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")

    cfg = make_cfg(
        *FAST,
        "logger=none",
        "task.eval.eval_pitch.shards=[ESC-50/test/esc50_fold_5_0000000.tar.gz]",
        f"+task.eval.eval_pitch.repo_id={REPO}",
    )
    error, _ = within_bound(lambda: train(cfg))
    assert isinstance(error, MissingShardError), error
    assert "ESC-50/test/esc50_fold_5_0000000.tar.gz" in str(error)

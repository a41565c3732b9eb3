"""Shard resolution, caching and downloading against a local HTTP server."""

from __future__ import annotations

import http.server
import os
import re
import threading
import time
from pathlib import Path

import pytest

from xares.data import shards
from xares.data.prefetch import collect_datasets, load_task_file, main, prefetch
from xares.data.shards import (
    DownloadError,
    MissingShardError,
    RemoteNotFoundError,
    data_home,
    expand_pattern,
    hf_endpoint,
    hub_url,
    resolve_shards,
)

REPO = "mispeech/xares_llm_data"


# --------------------------------------------------------------------------- server


class FileServer:
    """Serves ``files`` over HTTP with Range support; records every request.

    ``modes[path]`` changes how a path misbehaves: ``cut_once`` sends half the
    body of the first full request and drops the connection, ``always_cut``
    does that every time, ``no_range`` ignores Range headers, ``slow`` dribbles
    the body out so concurrent clients overlap.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._cut_done: set[str] = set()
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner._serve(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def _serve(self, h: http.server.BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        with self._lock:
            self.requests.append((path, dict(h.headers.items())))
        body = self.files.get(path)
        if body is None:
            h.send_error(404)
            return
        mode = self.modes.get(path, "ok")
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
        if match and mode != "no_range":
            start = int(match.group(1))
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            h.send_response(200)
        h.send_header("Content-Length", str(len(body) - start))
        h.end_headers()
        payload = body[start:]
        cut = mode == "always_cut" or (mode == "cut_once" and path not in self._cut_done)
        if cut:
            self._cut_done.add(path)
            h.wfile.write(payload[: len(payload) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        if mode == "slow":
            for i in range(0, len(payload), 256):
                h.wfile.write(payload[i : i + 256])
                h.wfile.flush()
                time.sleep(0.01)
            return
        h.wfile.write(payload)

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)


@pytest.fixture
def server():
    srv = FileServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    for name in ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE", "XARES_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XARES_DATA_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(shards, "BACKOFF_BASE", 0.0)
    monkeypatch.setattr(shards, "CHUNK_SIZE", 1024)
    monkeypatch.chdir(tmp_path)


def payload(n: int = 10_000, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed * 7) % 251 for i in range(n))


# --------------------------------------------------------------------------- patterns


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("x_{000..003}.tar", ["x_000.tar", "x_001.tar", "x_002.tar", "x_003.tar"]),
        ("f{1..4}_0.tar.gz", ["f1_0.tar.gz", "f2_0.tar.gz", "f3_0.tar.gz", "f4_0.tar.gz"]),
        ("{8..11}", ["8", "9", "10", "11"]),
        ("{1..010}", [f"{i:03d}" for i in range(1, 11)]),
        ("{00..3}", ["00", "01", "02", "03"]),
        ("{3..1}", ["3", "2", "1"]),
        ("{0..10..5}", ["0", "5", "10"]),
        ("{a,b}.tar", ["a.tar", "b.tar"]),
        ("{a,b}_{1..2}", ["a_1", "a_2", "b_1", "b_2"]),
        (
            "d/{train,test}/s_{00..01}.tar",
            ["d/train/s_00.tar", "d/train/s_01.tar", "d/test/s_00.tar", "d/test/s_01.tar"],
        ),
        ("{a,b{1,2}}", ["a", "b1", "b2"]),
        ("plain/file.tar", ["plain/file.tar"]),
        ("x{a}y", ["x{a}y"]),
        ("open{1..2", ["open{1..2"]),
    ],
)
def test_expand_pattern(pattern, expected):
    assert expand_pattern(pattern) == expected


def test_expand_protocol_pattern_width():
    names = expand_pattern("AISHELL-1/train/train_000{000..173}.tar.gz")
    assert len(names) == 174
    assert names[0].endswith("train_000000.tar.gz") and names[-1].endswith("train_000173.tar.gz")


def test_locations(tmp_path, monkeypatch):
    assert data_home() == (tmp_path / "cache").resolve()
    monkeypatch.delenv("XARES_DATA_HOME")
    assert data_home() == (tmp_path / "xares_data").resolve()
    assert hf_endpoint() == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    assert hf_endpoint() == "https://mirror.example"
    assert hub_url(REPO, "ESC-50/a.tar") == (
        "https://mirror.example/datasets/mispeech/xares_llm_data/resolve/main/ESC-50/a.tar"
    )


# --------------------------------------------------------------------------- local


def test_local_globs_sorted_and_braces(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("s_2.tar", "s_10.tar", "s_1.tar", "t_0.tar", "notes.txt"):
        (data / name).write_bytes(b"x")
    got = resolve_shards(["data/s_*.tar", "data/{t,s}_[01].tar"], progress=False)
    assert [Path(p).name for p in got] == ["s_1.tar", "s_10.tar", "s_2.tar", "t_0.tar"]
    assert all(Path(p).is_absolute() for p in got)
    # root replaces the cwd as the base of relative patterns
    other = tmp_path / "elsewhere"
    other.mkdir()
    os.chdir(other)
    assert resolve_shards("s_{1..2}.tar", root=data, progress=False) == [
        str(data / "s_1.tar"),
        str(data / "s_2.tar"),
    ]


def test_missing_local_pattern_is_an_error(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"x")
    with pytest.raises(MissingShardError) as info:
        resolve_shards(["a.tar", "nothing_*.tar", "b_{1..2}.tar"], progress=False)
    err = info.value
    assert isinstance(err, FileNotFoundError)
    assert [m.shard for m in err.missing] == ["nothing_*.tar", "b_1.tar", "b_2.tar"]
    assert "match no file" in str(err)


# --------------------------------------------------------------------------- remote


def test_url_downloaded_once(server, tmp_path):
    server.files["/d/x_0.tar"] = payload(5000, 1)
    server.files["/d/x_1.tar"] = payload(7000, 2)
    pattern = server.url + "/d/x_{0..1}.tar"
    first = resolve_shards(pattern, progress=True)
    host = f"127.0.0.1_{server.httpd.server_address[1]}"
    assert first == [str(data_home() / "urls" / host / "d" / f"x_{i}.tar") for i in (0, 1)]
    assert Path(first[0]).read_bytes() == payload(5000, 1)
    assert Path(first[1]).read_bytes() == payload(7000, 2)
    assert len(server.requests) == 2
    again = resolve_shards([pattern, pattern], progress=False, offline=True)
    assert again == first
    assert len(server.requests) == 2


def test_hub_layout_root_and_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.url + "/")
    for i in range(1, 5):
        server.files[f"/datasets/{REPO}/resolve/main/ESC-50/train/f_{i}.tar.gz"] = payload(900, i)
    root = tmp_path / "local_copy"
    (root / "ESC-50/train").mkdir(parents=True)
    (root / "ESC-50/train/f_2.tar.gz").write_bytes(b"local")

    got = resolve_shards("ESC-50/train/f_{1..4}.tar.gz", REPO, root=root, progress=False)
    assert got[1] == str(root / "ESC-50/train/f_2.tar.gz")
    for i in (1, 3, 4):
        path = data_home() / REPO / f"ESC-50/train/f_{i}.tar.gz"
        assert got[i - 1] == str(path)
        assert path.read_bytes() == payload(900, i)
    assert sorted(p for p, _ in server.requests) == [
        f"/datasets/{REPO}/resolve/main/ESC-50/train/f_{i}.tar.gz" for i in (1, 3, 4)
    ]
    assert resolve_shards("ESC-50/train/f_{1..4}.tar.gz", REPO, root=root, offline=True) == got
    assert len(server.requests) == 3


def test_interrupted_download_resumes_with_range(server, monkeypatch):
    body = payload(8000, 3)
    server.files["/big.tar"] = body
    server.modes["/big.tar"] = "cut_once"
    url = server.url + "/big.tar"
    dest = shards._url_cache_path(url)

    monkeypatch.setattr(shards, "RETRIES", 0)
    with pytest.raises(DownloadError, match="4000 of 8000"):
        resolve_shards(url, progress=False)
    assert not dest.exists()
    part = dest.with_name(dest.name + ".part")
    assert part.read_bytes() == body[:4000]

    monkeypatch.setattr(shards, "RETRIES", 5)
    assert resolve_shards(url, progress=False) == [str(dest)]
    assert dest.read_bytes() == body
    assert not part.exists()
    assert server.requests[-1][1].get("Range") == "bytes=4000-"


def test_retry_within_one_call_and_server_without_range(server):
    body = payload(6000, 4)
    server.files["/a.tar"] = body
    server.modes["/a.tar"] = "cut_once"
    server.files["/b.tar"] = body[::-1]
    server.modes["/b.tar"] = "no_range"
    shards.download_file(server.url + "/a.tar", Path("a.tar"), progress=False)
    assert Path("a.tar").read_bytes() == body
    assert [h.get("Range") for _, h in server.requests] == [None, "bytes=3000-"]

    # a partial file left from an earlier run; the server answers 200, so start over
    Path("b.tar.part").write_bytes(b"stale bytes")
    shards.download_file(server.url + "/b.tar", Path("b.tar"), progress=False)
    assert Path("b.tar").read_bytes() == body[::-1]


def test_server_that_always_cuts(server, monkeypatch):
    server.files["/bad.tar"] = payload(4096)
    server.modes["/bad.tar"] = "always_cut"
    monkeypatch.setattr(shards, "RETRIES", 3)
    url = server.url + "/bad.tar"
    with pytest.raises(DownloadError, match="after 4 attempt"):
        resolve_shards(url, progress=False)
    assert server.count("/bad.tar") == 4
    dest = shards._url_cache_path(url)
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if not p.name.endswith((".part", ".lock"))] == []


def test_404_fails_fast_with_the_url(server):
    url = server.url + "/nope.tar"
    with pytest.raises(RemoteNotFoundError) as info:
        resolve_shards(url, progress=False)
    assert url in str(info.value) and "404" in str(info.value)
    assert server.count("/nope.tar") == 1


def test_offline_lists_every_missing_shard(server, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingShardError) as info:
        resolve_shards(
            ["ESC-50/train/esc50_fold_{1..4}_0000000.tar.gz", "VoxCeleb1/train/t_0000{00..19}.tar"],
            REPO,
            task="esc50",
        )
    err = info.value
    text = str(err)
    assert len(err.missing) == 24
    assert "24 shard(s) are missing" in text and "... and 14 more" in text
    assert hub_url(REPO, "ESC-50/train/esc50_fold_1_0000000.tar.gz") in text
    assert str(data_home() / REPO / "ESC-50/train/esc50_fold_4_0000000.tar.gz") in text
    assert "make data TASK=esc50" in text
    assert "python -m xares.data.prefetch task=esc50" in text
    assert "XARES_DATA_HOME" in text and "HF_ENDPOINT" in text
    assert server.requests == []

    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(MissingShardError, match="download=False"):
        resolve_shards("ESC-50/a.tar", REPO, download=False)
    assert server.requests == []


def test_hf_token_only_for_the_hub(server, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    server.files[f"/datasets/{REPO}/resolve/main/t.tar"] = b"tar"
    server.files["/plain/t.tar"] = b"tar"
    resolve_shards("t.tar", REPO, progress=False)
    assert server.requests[-1][1].get("Authorization") == "Bearer hf_secret"

    monkeypatch.setenv("HF_ENDPOINT", "https://huggingface.co")
    resolve_shards(server.url + "/plain/t.tar", progress=False)
    assert "Authorization" not in server.requests[-1][1]


def test_concurrent_downloads_share_one_transfer(server):
    body = payload(20_000, 5)
    server.files["/c.tar"] = body
    server.modes["/c.tar"] = "slow"
    url = server.url + "/c.tar"
    results: list[object] = []

    def fetch() -> None:
        try:
            results.append(resolve_shards(url, progress=False))
        except Exception as err:  # surfaced by the assertion below
            results.append(err)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    dest = shards._url_cache_path(url)
    assert results == [[str(dest)]] * 3
    assert dest.read_bytes() == body
    assert server.count("/c.tar") == 1
    assert sorted(p.name for p in dest.parent.iterdir()) == ["c.tar"]


def test_unsafe_repo_paths_are_refused():
    with pytest.raises(ValueError, match="inside the cache"):
        resolve_shards("../../etc/passwd", REPO, offline=True)


# --------------------------------------------------------------------------- prefetch


def write_task(tmp_path: Path) -> Path:
    task = tmp_path / "esc50.yaml"
    task.write_text(
        f"""
train:
  esc-50:
    shards: ["ESC-50/train/esc50_fold_{{1..2}}_0000000.tar.gz"]
    repo_id: {REPO}
    label_key: label
    prompt: Classify the environmental sound.
    prob: 0.5
eval:
  eval_esc-50:
    shards: ["ESC-50/test/esc50_fold_5_0000000.tar.gz"]
    repo_id: {REPO}
    label_key: label
    prompt: Classify the environmental sound.
    metric: Accuracy
    metric_args: {{}}
    batch_size: 4
    weight: 1
"""
    )
    return task


def test_prefetch_task_file(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    base = f"/datasets/{REPO}/resolve/main/ESC-50"
    server.files[f"{base}/train/esc50_fold_1_0000000.tar.gz"] = payload(1000, 1)
    server.files[f"{base}/train/esc50_fold_2_0000000.tar.gz"] = payload(2000, 2)
    server.files[f"{base}/test/esc50_fold_5_0000000.tar.gz"] = payload(3000, 3)
    task = write_task(tmp_path)

    datasets = collect_datasets(load_task_file(task))
    assert [d["name"] for d in datasets] == ["train.esc-50", "eval.eval_esc-50"]
    paths = prefetch(datasets, progress=False)
    assert [Path(p).name for p in paths] == [
        "esc50_fold_1_0000000.tar.gz",
        "esc50_fold_2_0000000.tar.gz",
        "esc50_fold_5_0000000.tar.gz",
    ]
    assert sum(os.path.getsize(p) for p in paths) == 6000

    assert main([str(task), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 shard(s) from 2 dataset(s)" in out and str(data_home()) in out
    assert len(server.requests) == 3


def test_prefetch_reports_all_missing_at_once(tmp_path, capsys):
    task = write_task(tmp_path)
    with pytest.raises(MissingShardError) as info:
        prefetch(collect_datasets(load_task_file(task)), download=False, task="esc50")
    assert len(info.value.missing) == 3
    assert main([str(task), "--check"]) == 1
    assert "3 shard(s) are missing" in capsys.readouterr().err

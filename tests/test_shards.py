"""Shard resolution, caching and downloading against a local stand-in for the hub."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants

import xares.data.download as download
from xares.data.download import (
    DownloadError,
    RemoteNotFoundError,
    data_home,
    download_file,
    hf_endpoint,
    hub_url,
)
from xares.data.prefetch import collect_datasets, load_task_file, main, prefetch
from xares.data.shards import MissingShardError, expand_pattern, resolve_shards

REPO = "mispeech/xares_llm_data"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE = re.compile(r"^/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
TREE = re.compile(r"^/api/datasets/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<folder>.+))?$")


# --------------------------------------------------------------------------- server


class HubServer:
    """Answers what ``huggingface_hub`` asks a hub endpoint, plus plain file URLs.

    ``files`` maps URL paths to bodies: ``/datasets/<repo>/resolve/main/<path>``
    for repository files (HEAD with ``X-Repo-Commit``/``ETag``, GET with Range,
    a 404 with ``X-Error-Code: EntryNotFound`` for an unknown entry, and the
    ``/api/datasets/<repo>/tree/main/<folder>`` listing), anything else as a plain
    file. ``modes[path]`` makes a path misbehave: ``cut_once`` sends half the body
    of the first GET and drops the connection, ``busy_once`` answers the first
    request with 503, ``error`` always answers 500, ``forbidden`` always answers 403,
    ``drop`` closes the connection without an answer, ``slow`` dribbles the body out
    so concurrent clients overlap. Every request is recorded as (method, path, headers),
    header names in lower case.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._done: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner._serve(self, body=True)

            def do_HEAD(self) -> None:
                owner._serve(self, body=False)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def _once(self, mode: str, path: str) -> bool:
        with self._lock:
            if (mode, path) in self._done:
                return False
            self._done.add((mode, path))
            return True

    def _reply(self, h, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        h.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            h.send_header(key, value)
        h.end_headers()
        if h.command == "GET":
            h.wfile.write(body)

    def _serve(self, h: http.server.BaseHTTPRequestHandler, body: bool) -> None:
        path = urllib.parse.unquote(h.path.split("?", 1)[0])
        with self._lock:
            self.requests.append((h.command, path, {k.lower(): v for k, v in h.headers.items()}))
        mode = self.modes.get(path, "ok")
        if mode == "drop":
            h.close_connection = True
            return
        if mode == "forbidden":
            self._reply(h, 403, {})
            return
        if mode == "error" or (mode == "busy_once" and self._once(mode, path)):
            self._reply(h, 500 if mode == "error" else 503, {})
            return
        tree = TREE.match(path)
        if tree:
            self._serve_tree(h, tree)
            return
        data = self.files.get(path)
        hub = {"X-Repo-Commit": COMMIT} if RESOLVE.match(path) else {}
        if data is None:
            self._reply(h, 404, {**hub, "X-Error-Code": "EntryNotFound"} if hub else {})
            return
        if hub:
            hub["ETag"] = f'"{hashlib.sha1(data).hexdigest()}"'
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
        headers = dict(hub)
        if match and body:
            start = int(match.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        payload = data[start:]
        h.send_response(206 if start else 200)
        for key, value in {**headers, "Content-Length": str(len(payload))}.items():
            h.send_header(key, value)
        h.end_headers()
        if not body:
            return
        if mode == "cut_once" and self._once(mode, path):
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

    def _serve_tree(self, h, tree: re.Match) -> None:
        prefix = f"/datasets/{tree['repo']}/resolve/{tree['rev']}/"
        folder = (tree["folder"] or "").strip("/")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query)
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries = [
            {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            for key, data in sorted(self.files.items())
            if key.startswith(prefix)
            for name in [key[len(prefix) :]]
            if not folder or name.startswith(folder + "/")
            if recursive or "/" not in name[len(folder) + 1 if folder else 0 :]
        ]
        body = json.dumps(entries).encode()
        self._reply(h, 200, {"Content-Type": "application/json"}, body)

    def count(self, path: str, method: str = "GET") -> int:
        return sum(1 for m, p, _ in self.requests if p == path and m == method)

    def paths(self, method: str = "GET") -> list[str]:
        return sorted(p for m, p, _ in self.requests if m == method)


@pytest.fixture
def server():
    srv = HubServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    for name in ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE", "XARES_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XARES_DATA_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    # Each test's servers start unknown (a closed port's number may be reused later).
    monkeypatch.setattr(download, "_servers", {})


@pytest.fixture
def no_backoff(monkeypatch):
    """huggingface_hub waits seconds between retries; the stand-in server needs none."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)


def payload(n: int = 10_000, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed * 7) % 251 for i in range(n))


def resolve_path(path: str) -> str:
    return f"/datasets/{REPO}/resolve/main/{path}"


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
        (r"x\{1,2\}.tar", ["x{1,2}.tar"]),
    ],
)
def test_expand_pattern(pattern, expected):
    assert expand_pattern(pattern) == expected


def test_expand_protocol_pattern_width():
    names = expand_pattern("AISHELL-1/train/train_000{000..173}.tar.gz")
    assert len(names) == 174
    assert names[0].endswith("train_000000.tar.gz") and names[-1].endswith("train_000173.tar.gz")


@pytest.mark.parametrize("pattern", ["open{1..2.tar", "lone}.tar", r"half\{1,2}.tar"])
def test_unbalanced_braces_are_an_error(pattern):
    with pytest.raises(ValueError, match=r"unbalanced braces.*'\\\{'"):
        resolve_shards(pattern, offline=True)


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


# --------------------------------------------------------------------------- hub


def test_hub_download_root_and_cache_hit(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.url + "/")
    for i in range(1, 5):
        server.files[resolve_path(f"ESC-50/train/f_{i}.tar.gz")] = payload(900, i)
    root = tmp_path / "local_copy"
    (root / "ESC-50/train").mkdir(parents=True)
    (root / "ESC-50/train/f_2.tar.gz").write_bytes(b"local")

    got = resolve_shards("ESC-50/train/f_{1..4}.tar.gz", REPO, root=root, progress=True)
    assert got[1] == str(root / "ESC-50/train/f_2.tar.gz")
    for i in (1, 3, 4):
        path = data_home() / REPO / f"ESC-50/train/f_{i}.tar.gz"
        assert got[i - 1] == str(path)
        assert path.read_bytes() == payload(900, i)
    fetched = [resolve_path(f"ESC-50/train/f_{i}.tar.gz") for i in (1, 3, 4)]
    assert server.paths("GET") == fetched
    seen = len(server.requests)
    # A warm cache is read without asking the server, online or offline.
    assert resolve_shards("ESC-50/train/f_{1..4}.tar.gz", REPO, root=root, offline=True) == got
    assert resolve_shards("ESC-50/train/f_{1..4}.tar.gz", REPO, root=root) == got
    assert len(server.requests) == seen
    assert not list((data_home() / REPO).rglob("*.incomplete"))


def test_hub_layout_of_a_manual_download_is_read_in_place(server, monkeypatch):
    # `hf download <repo> --local-dir $XARES_DATA_HOME` puts repository paths at the top.
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    flat = data_home() / "ESC-50/test/a.tar"
    flat.parent.mkdir(parents=True)
    flat.write_bytes(b"manual")
    assert resolve_shards("ESC-50/test/a.tar", REPO) == [str(flat)]
    assert server.requests == []


def test_hub_glob_is_listed_then_read_from_disk(server, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    for name in ("s_2.tar", "s_10.tar", "s_1.tar", "notes.txt", "s_4/deeper.tar"):
        server.files[resolve_path(f"Set/train/{name}")] = name.encode()
    server.files[resolve_path("Other/train/s_3.tar")] = b"elsewhere"

    got = resolve_shards("Set/train/s_*.tar", REPO, progress=False)
    # as a glob on disk: '*' stays inside its folder
    assert [Path(p).name for p in got] == ["s_1.tar", "s_10.tar", "s_2.tar"]
    assert [Path(p).read_bytes() for p in got] == [b"s_1.tar", b"s_10.tar", b"s_2.tar"]
    assert [p for m, p, _ in server.requests if p.startswith("/api/")] == [
        f"/api/datasets/{REPO}/tree/main/Set/train"
    ]
    seen = len(server.requests)
    assert resolve_shards("Set/train/s_*.tar", REPO, progress=False) == got
    assert len(server.requests) == seen

    with pytest.raises(RemoteNotFoundError, match="matches 'Set/test/"):
        resolve_shards("Set/test/*.tar", REPO, progress=False)


def test_hub_glob_cut_short_is_completed_not_trusted(server, monkeypatch, no_backoff, caplog):
    """A glob fetch that stopped after some files does not pass for the whole glob later."""
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    names = [f"Set/train/s_{i}.tar" for i in range(3)]
    for name in names:
        server.files[resolve_path(name)] = name.encode()
    server.modes[resolve_path(names[1])] = "forbidden"
    with pytest.raises((DownloadError, MissingShardError), match="403"):
        resolve_shards("Set/train/s_*.tar", REPO, progress=False)
    on_disk = sorted(p.name for p in (data_home() / REPO / "Set/train").glob("*.tar"))
    assert on_disk == ["s_0.tar"]

    # Offline: the disk cannot say whether s_0.tar is all of it, and no listing says so.
    caplog.set_level("WARNING", logger="xares.data.shards")
    got = resolve_shards("Set/train/s_*.tar", REPO, offline=True)
    assert [Path(p).name for p in got] == ["s_0.tar"]
    assert "cannot be checked" in caplog.text and "Set/train/s_*.tar" in caplog.text

    # Online: listed again and completed.
    del server.modes[resolve_path(names[1])]
    got = resolve_shards("Set/train/s_*.tar", REPO, progress=False)
    assert [Path(p).read_bytes() for p in got] == [name.encode() for name in names]
    assert server.count(resolve_path(names[0])) == 1  # not fetched twice
    listings = list((data_home() / REPO / ".xares/globs").glob("*.json"))
    assert len(listings) == 1 and json.loads(listings[0].read_text())["files"] == names

    # The listing makes the disk trusted, online and offline, without asking the hub.
    seen = len(server.requests)
    assert resolve_shards("Set/train/s_*.tar", REPO, progress=False) == got
    assert resolve_shards("Set/train/s_*.tar", REPO, offline=True) == got
    assert len(server.requests) == seen

    # A listed file gone from disk: offline, that file is missing, named with the glob.
    Path(got[2]).unlink()
    with pytest.raises(MissingShardError) as info:
        resolve_shards("Set/train/s_*.tar", REPO, offline=True, task="t")
    assert [(m.shard, Path(m.path).name) for m in info.value.missing] == [
        ("Set/train/s_*.tar", "s_2.tar")
    ]
    assert hub_url(REPO, names[2]) in str(info.value) and "make data TASK=t" in str(info.value)
    # ... and online it is fetched again.
    assert resolve_shards("Set/train/s_*.tar", REPO, progress=False) == got
    assert server.count(resolve_path(names[2])) == 2


def test_manual_copy_of_a_glob_without_listing(server, monkeypatch, no_backoff, caplog):
    """`hf download --local-dir` writes no listing: online it is checked, offline trusted."""
    names = [f"Set/train/s_{i}.tar" for i in range(2)]
    for name in names:
        path = data_home() / name  # the flat layout of `--local-dir $XARES_DATA_HOME`
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"manual")
        server.files[resolve_path(name)] = b"hub"
    caplog.set_level("WARNING", logger="xares.data.shards")

    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())  # the network is down
    got = resolve_shards("Set/train/s_*.tar", REPO, progress=False)
    assert got == [str(data_home() / name) for name in names]
    assert "the hub did not answer" in caplog.text and "cannot be checked" in caplog.text

    monkeypatch.setenv("HF_ENDPOINT", server.url)
    assert resolve_shards("Set/train/s_*.tar", REPO, progress=False) == got
    assert server.paths("GET") == [f"/api/datasets/{REPO}/tree/main/Set/train"]  # no download
    assert list((data_home() / REPO / ".xares/globs").glob("*.json"))


def test_hub_404_fails_fast_naming_the_file(server, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    with pytest.raises(RemoteNotFoundError) as info:
        resolve_shards("ESC-50/train/nope.tar", REPO, progress=False)
    text = str(info.value)
    assert "ESC-50/train/nope.tar" in text and REPO in text and server.url in text
    assert "404" in text
    # Asked whether the hub answers at all, then the file's metadata.
    assert [r[:2] for r in server.requests[:2]] == [
        ("HEAD", "/"),
        ("HEAD", resolve_path("ESC-50/train/nope.tar")),
    ]
    assert server.count(resolve_path("ESC-50/train/nope.tar")) == 0
    assert not (data_home() / REPO / "ESC-50/train/nope.tar").exists()


def test_hub_server_error_is_retried(server, monkeypatch, no_backoff):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    path = resolve_path("busy.tar")
    server.files[path] = payload(3000, 6)
    server.modes[path] = "busy_once"
    got = resolve_shards("busy.tar", REPO, progress=False)
    assert Path(got[0]).read_bytes() == payload(3000, 6)
    assert server.count(path, "HEAD") == 2 and server.count(path) == 1


def test_flaky_hub_is_still_retried(server, monkeypatch, no_backoff):
    """A 503 to the first question and to the file's first request: a hub that answers."""
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    path = resolve_path("flaky.tar")
    server.files[path] = payload(2000, 9)
    server.modes["/"] = "busy_once"
    server.modes[path] = "busy_once"
    got = resolve_shards("flaky.tar", REPO, progress=False)
    assert Path(got[0]).read_bytes() == payload(2000, 9)
    assert server.count(path, "HEAD") == 2 and server.count(path) == 1
    assert not list(data_home().rglob("*.lock"))


def test_a_shard_without_answer_asks_the_hub_again_and_a_second_one_stops(
    server, monkeypatch, no_backoff
):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    names = [f"s_{i}.tar" for i in range(5)]
    for i, name in enumerate(names):
        server.files[resolve_path(name)] = payload(500, i)
    server.modes[resolve_path(names[0])] = "drop"
    server.modes[resolve_path(names[2])] = "drop"
    with pytest.raises(MissingShardError) as info:
        resolve_shards("s_{0..4}.tar", REPO, task="t", progress=False)
    # s_0 failed but the hub still answered, so s_1 was fetched; s_2 failed too, so the
    # hub counts as down and s_3, s_4 were not asked for.
    assert [m.shard for m in info.value.missing] == ["s_0.tar", "s_2.tar", "s_3.tar", "s_4.tar"]
    assert server.paths("HEAD").count("/") == 2
    assert server.count(resolve_path(names[1])) == 1
    assert not server.count(resolve_path(names[3]), "HEAD")
    assert (data_home() / REPO / names[1]).read_bytes() == payload(500, 1)
    assert "no usable answer from" in str(info.value) and "make data TASK=t" in str(info.value)
    assert not list(data_home().rglob("*.lock"))


def test_a_hub_found_down_fails_every_later_dataset_without_a_request(
    monkeypatch, no_backoff, server
):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    for shard in ("A/a_{1..3}.tar", "B/b.tar", "C/*.tar"):
        with pytest.raises(MissingShardError, match="no usable answer from"):
            resolve_shards(shard, REPO, progress=False)
    # Another server is still asked: only the one that did not answer is down.
    server.files["/p.tar"] = b"plain"
    assert Path(resolve_shards(server.url + "/p.tar", progress=False)[0]).read_bytes() == b"plain"


def test_unreachable_hub_lists_every_missing_shard(monkeypatch, no_backoff):
    endpoint = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(MissingShardError) as info:
        resolve_shards("ESC-50/train/f_{1..3}.tar", REPO, task="esc50", progress=False)
    err = info.value
    assert [m.shard for m in err.missing] == [f"ESC-50/train/f_{i}.tar" for i in (1, 2, 3)]
    text = str(err)
    assert "no usable answer from" in text and endpoint in text
    assert "make data TASK=esc50" in text and "HF_ENDPOINT" in text


def test_merged_error_gives_the_reason_of_the_remote_shards(tmp_path, monkeypatch, no_backoff):
    """A local typo next to a hub dataset that cannot be reached: the network is the reason."""
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    datasets = [
        {"shards": "typo/s_*.tar"},
        {"shards": "ESC-50/train/f_1.tar", "repo_id": REPO},
    ]
    with pytest.raises(MissingShardError) as info:
        prefetch(datasets, progress=False, task="esc50")
    text = str(info.value)
    assert [m.shard for m in info.value.missing] == ["typo/s_*.tar", "ESC-50/train/f_1.tar"]
    assert "no usable answer from" in text and "offline mode" not in text
    assert info.value.reason.startswith("no usable answer from")


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


def closed_port_url() -> str:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_hf_token_only_for_the_hub(server, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    server.files[resolve_path("t.tar")] = b"tar"
    server.files["/plain/t.tar"] = b"tar"
    server.files["/plain/u.tar"] = b"tar"
    resolve_shards("t.tar", REPO, progress=False)
    assert server.requests[-1][1] == resolve_path("t.tar")
    assert server.requests[-1][2].get("authorization") == "Bearer hf_secret"

    # A plain URL on the hub's host is the hub's too (a file under /datasets/... written out).
    resolve_shards(server.url + "/plain/t.tar", progress=False)
    assert server.requests[-1][1] == "/plain/t.tar"
    assert server.requests[-1][2].get("authorization") == "Bearer hf_secret"

    # Any other host never sees the token.
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    resolve_shards(server.url + "/plain/u.tar", progress=False)
    assert server.requests[-1][1] == "/plain/u.tar"
    assert "authorization" not in server.requests[-1][2]


def test_refused_url_says_what_can_help(server, monkeypatch):
    server.files["/locked.tar"] = b"x"
    server.modes["/locked.tar"] = "forbidden"
    url = server.url + "/locked.tar"

    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    with pytest.raises(DownloadError, match="HTTP 403") as info:
        download_file(url, Path("a/locked.tar"), progress=False)
    assert "No credentials are sent to 127.0.0.1" in str(info.value)
    assert "signed URL" in str(info.value) and "Set HF_TOKEN" not in str(info.value)

    monkeypatch.setenv("HF_ENDPOINT", server.url)
    with pytest.raises(DownloadError, match="HF_TOKEN was sent; use a token that has access"):
        download_file(url, Path("b/locked.tar"), progress=False)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", "/nonexistent/token")
    with pytest.raises(DownloadError, match="Set HF_TOKEN to a token that has access"):
        download_file(url, Path("c/locked.tar"), progress=False)


def test_concurrent_downloads_share_one_transfer(server, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    body = payload(20_000, 5)
    path = resolve_path("c.tar")
    server.files[path] = body
    server.modes[path] = "slow"
    results: list[object] = []

    def fetch() -> None:
        try:
            results.append(resolve_shards("c.tar", REPO, progress=False))
        except Exception as err:  # surfaced by the assertion below
            results.append(err)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    dest = data_home() / REPO / "c.tar"
    assert results == [[str(dest)]] * 3
    assert dest.read_bytes() == body
    assert server.count(path) == 1
    assert [p.name for p in dest.parent.iterdir() if not p.name.startswith(".")] == ["c.tar"]


def test_unsafe_repo_paths_are_refused():
    with pytest.raises(ValueError, match="inside the cache"):
        resolve_shards("../../etc/passwd", REPO, offline=True)


# --------------------------------------------------------------------------- plain URLs


def test_url_downloaded_once(server):
    server.files["/d/x_0.tar"] = payload(5000, 1)
    server.files["/d/x_1.tar"] = payload(7000, 2)
    pattern = server.url + "/d/x_{0..1}.tar"
    first = resolve_shards(pattern, progress=True)
    host = f"127.0.0.1_{server.httpd.server_address[1]}"
    assert first == [str(data_home() / "urls" / host / "d" / f"x_{i}.tar") for i in (0, 1)]
    assert Path(first[0]).read_bytes() == payload(5000, 1)
    assert Path(first[1]).read_bytes() == payload(7000, 2)
    assert server.paths("GET") == ["/d/x_0.tar", "/d/x_1.tar"]
    again = resolve_shards([pattern, pattern], progress=False, offline=True)
    assert again == first
    assert resolve_shards(pattern, progress=False) == first
    assert server.paths("GET") == ["/d/x_0.tar", "/d/x_1.tar"]
    assert server.paths("HEAD") == ["/"]  # the server was asked once whether it answers


def test_dropped_connection_resumes_with_range(server, no_backoff, monkeypatch):
    # huggingface_hub resumes from the last whole chunk it wrote; small chunks make
    # a small body show it.
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 1024)
    body = payload(6000, 4)
    server.files["/a.tar"] = body
    server.modes["/a.tar"] = "cut_once"
    download_file(server.url + "/a.tar", Path("a.tar"), progress=False)
    assert Path("a.tar").read_bytes() == body
    ranges = [h.get("range") for _, _, h in server.requests]
    assert len(ranges) == 2 and ranges[0] is None
    assert re.fullmatch(r"bytes=(\d+)-", ranges[1]) and 0 < int(ranges[1][6:-1]) <= 3000
    assert sorted(os.listdir(".")) == ["a.tar"]  # no lock file left behind


def test_killed_download_leaves_no_temporary_file_behind(server):
    """A SIGKILL skips every cleanup; the next download of that file removes its leftovers."""
    server.files["/k.tar"] = payload(3000, 8)
    folder = Path("dl")
    folder.mkdir()
    stale = [folder / ".k.tar.x1y2z3.incomplete", folder / ".k.tar.abc_9.incomplete"]
    for path in stale:
        path.write_bytes(b"half a shard")
    other = folder / ".kk.tar.q1.incomplete"  # another file's, maybe being written now
    other.write_bytes(b"busy")
    download_file(server.url + "/k.tar", folder / "k.tar", progress=False)
    assert (folder / "k.tar").read_bytes() == payload(3000, 8)
    assert sorted(p.name for p in folder.iterdir()) == [other.name, "k.tar"]


def test_url_404_fails_fast_with_the_url(server):
    url = server.url + "/nope.tar"
    with pytest.raises(RemoteNotFoundError) as info:
        resolve_shards(url, progress=False)
    assert url in str(info.value) and "404" in str(info.value)
    assert server.count("/nope.tar") == 1


def test_url_server_error_is_a_clear_error(server):
    server.files["/down.tar"] = b"x"
    server.modes["/down.tar"] = "error"
    url = server.url + "/down.tar"
    with pytest.raises(DownloadError) as info:
        resolve_shards(url, progress=False)
    assert url in str(info.value) and "HTTP 500" in str(info.value)
    assert "run again later" in str(info.value)
    folder = data_home() / "urls" / f"127.0.0.1_{server.httpd.server_address[1]}"
    assert list(folder.iterdir()) == []  # neither a partial file nor a stale lock


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
    base = resolve_path("ESC-50")
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
    assert len(server.paths("GET")) == 3


def test_prefetch_reports_all_missing_at_once(tmp_path, capsys):
    task = write_task(tmp_path)
    with pytest.raises(MissingShardError) as info:
        prefetch(collect_datasets(load_task_file(task)), download=False, task="esc50")
    assert len(info.value.missing) == 3
    assert main([str(task), "--check"]) == 1
    assert "3 shard(s) are missing" in capsys.readouterr().err

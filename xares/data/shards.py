"""Resolve shard patterns to local files, downloading remote shards into a cache.

A dataset names its shards as local paths, globs, brace patterns, URLs, or paths
inside a Hugging Face dataset repository (``repo_id``). ``resolve_shards`` turns
all of those into a flat list of local files. Remote files are fetched once into
``data_home()`` and read from there afterwards, so training never touches the
network once the cache is warm.

The transfers themselves belong to ``huggingface_hub``: ``hf_hub_download`` for
files in a dataset repository (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``,
retries, the Xet transfer backend, copying from the user's HF cache) and its
``http_get`` for plain URLs (retries, and resuming after a connection dropped in
the middle of a download; a download that was killed starts over in the next run).

Those retries suit a server that stumbles, not one that is gone: against a hub that
never answers, each shard would wait minutes. So a server is first asked once, with
huggingface_hub's own metadata timeout (``HF_HUB_ETAG_TIMEOUT``), and a server that does
not answer at all fails every shard it holds at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import braceexpand
from filelock import FileLock
from huggingface_hub import HfApi, hf_hub_download, hf_hub_url
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub.file_download import http_get
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, filter_repo_objects, get_session
from tqdm.auto import tqdm

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = [
    "DownloadError",
    "MissingShardError",
    "RemoteNotFoundError",
    "data_home",
    "download_file",
    "expand_pattern",
    "hf_endpoint",
    "hub_url",
    "resolve_shards",
]

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_DATA_HOME = "xares_data"
REPO_TYPE = "dataset"
MAX_LISTED = 10

# How long a verdict on a server holds: one run's many datasets ask it once, and a process
# that lives longer (a notebook, a sweep) asks again, as the network may have come back.
PROBE_KEPT_S = 300.0

_URL_RE = re.compile(r"^https?://", re.IGNORECASE)
_GLOB_CHARS = re.compile(r"[*?\[]")
_TRUTHY = {"1", "true", "yes", "on"}


class MissingShardError(FileNotFoundError):
    """Shards that are neither on disk nor allowed to be fetched.

    Raised once per ``resolve_shards`` call with every missing shard, so a user
    fixes the whole set in one go instead of discovering them one by one.
    """

    def __init__(
        self, message: str, missing: Iterable[MissingShard] = (), reason: str | None = None
    ) -> None:
        # Only the message goes into args so the exception survives pickling
        # across DataLoader worker processes.
        super().__init__(message)
        self.missing = list(missing)
        self.reason = reason

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    @classmethod
    def build(
        cls,
        missing: Iterable[MissingShard],
        *,
        download: bool = True,
        task: str | None = None,
        cache: Path | None = None,
        reason: str | None = None,
    ) -> MissingShardError:
        """The error for ``missing``; without ``reason``, why remote ones were not fetched.

        A reason is kept only when remote shards are missing: local ones need no reason,
        and a guessed one ("offline mode is on") would mislead ``merge``.
        """
        missing = list(missing)
        if not any(item.url for item in missing):
            return cls(_missing_message(missing, "", task, cache), missing, None)
        if reason is None:
            if not download:
                reason = "downloading is disabled (download=False)"
            else:
                reason = "offline mode is on (offline=True, HF_HUB_OFFLINE=1 or XARES_OFFLINE=1)"
        return cls(_missing_message(missing, reason, task, cache), missing, reason)

    @classmethod
    def merge(
        cls, errors: Iterable[MissingShardError], *, download: bool = True, task: str | None = None
    ) -> MissingShardError:
        """One error for several datasets' errors, so a user sees everything at once."""
        errors = list(errors)
        missing = [item for error in errors for item in error.missing]
        # Only an error with remote shards says why they were not fetched (errors built
        # elsewhere may carry a reason with none).
        reason = next(
            (
                error.reason
                for error in errors
                if error.reason and any(item.url for item in error.missing)
            ),
            None,
        )
        return cls.build(missing, download=download, task=task, reason=reason)


class DownloadError(OSError):
    """A remote shard could not be downloaded."""

    def __init__(self, message: str, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RemoteNotFoundError(DownloadError, FileNotFoundError):
    """The server says the file does not exist (HTTP 404/410); retrying cannot help."""


class _Unreachable(DownloadError):
    """No usable answer from the server (no network, a wrong endpoint, an outage)."""


@dataclass(frozen=True)
class MissingShard:
    shard: str  # the expanded entry as the user wrote it
    path: str  # where it was looked for
    url: str | None = None  # where it would be downloaded from, if remote


@dataclass(frozen=True)
class _Remote:
    shard: str
    url: str
    dest: Path
    repo_id: str | None = None  # None: a plain URL
    filename: str = ""  # the path inside the repository
    local_dir: Path | None = None  # the repository's folder in the cache
    is_glob: bool = False  # filename is a pattern, listed from the hub when fetched
    places: tuple[Path, ...] = ()  # folders with the repository's layout, read before fetching
    on_disk: tuple[Path, ...] = ()  # a glob's matches on disk, used if the hub cannot be asked

    def as_missing(self) -> MissingShard:
        return MissingShard(self.shard, str(self.dest), self.url)


_Planned = Path | _Remote | MissingShard


# --------------------------------------------------------------------------- patterns


def expand_pattern(pattern: str) -> list[str]:
    """Expand shell-style braces: ``{000..012}``, ``{1..4}``, ``{a,b}``, ``{0..10..2}``.

    ``braceexpand`` follows bash (zero padding from the bounds as written, the
    leftmost group varying slowest, ``{a}`` literal, a backslash escaping the next
    character); an unbalanced or lone brace is a typo worth stopping for rather
    than a file name.
    """
    try:
        return list(braceexpand.braceexpand(pattern))
    except braceexpand.UnbalancedBracesError as err:  # type: ignore[attr-defined]
        raise ValueError(
            f"shard pattern {pattern!r} has unbalanced braces; close every '{{' "
            "(e.g. 'shard_{000..009}.tar'), or write a brace that is part of a file "
            "name as '\\{' or '\\}'"
        ) from err


# --------------------------------------------------------------------------- locations


def data_home() -> Path:
    """The shard cache: ``$XARES_DATA_HOME`` or ``./xares_data`` (relative to the cwd now)."""
    raw = os.environ.get("XARES_DATA_HOME") or DEFAULT_DATA_HOME
    return Path(raw).expanduser().resolve()


def hf_endpoint() -> str:
    """The Hugging Face endpoint: ``$HF_ENDPOINT`` (a mirror) or the public hub.

    Read at call time: ``huggingface_hub`` reads it once at import, which would
    ignore a value set later in the process (a test, a notebook cell).
    """
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_url(repo_id: str, path: str) -> str:
    """Download URL of ``path`` in the dataset repository ``repo_id`` (branch ``main``)."""
    return hf_hub_url(repo_id, path.lstrip("/"), repo_type=REPO_TYPE, endpoint=hf_endpoint())


def _offline_from_env() -> bool:
    from_env = any(
        os.environ.get(name, "").strip().lower() in _TRUTHY
        for name in ("HF_HUB_OFFLINE", "XARES_OFFLINE")
    )
    return from_env or hf_constants.is_offline_mode()


def _safe_parts(path: str, what: str) -> list[str]:
    # Cache paths are built from strings that come from configs and servers;
    # refusing ".." keeps a hostile or mistyped entry from writing outside the cache.
    parts = [p for p in PurePosixPath(path).parts if p not in ("/", ".", "")]
    if not parts or ".." in parts:
        raise ValueError(f"refusing {what} {path!r}: it must name a file inside the cache")
    return parts


def _url_cache_path(url: str, cache: Path | None = None) -> Path:
    split = urllib.parse.urlsplit(url)
    # ':' in "host:port" is not portable as a directory name.
    host = (split.hostname or "unknown-host") + (f"_{split.port}" if split.port else "")
    raw_path = urllib.parse.unquote(split.path)
    if raw_path.endswith("/") or not raw_path.strip("/"):
        raw_path = raw_path.rstrip("/") + "/index"
    dest = (cache or data_home()) / "urls" / host
    if split.query:
        # Same path with another query can be another file; keep the file name
        # (webdataset and humans read the extension) and separate by a directory.
        dest = dest / ("q" + hashlib.sha1(split.query.encode()).hexdigest()[:10])
    return dest.joinpath(*_safe_parts(raw_path, "URL path"))


# --------------------------------------------------------------------------- resolve


def resolve_shards(
    patterns: str | Iterable[str],
    repo_id: str | None = None,
    *,
    root: str | Path | None = None,
    download: bool = True,
    offline: bool | None = None,
    progress: bool = True,
    task: str | None = None,
    cache_dir: str | Path | None = None,
) -> list[str]:
    """Turn shard patterns into local file paths, downloading what is missing.

    Each pattern is brace-expanded, then:

    * an ``http(s)://`` URL is cached under ``data_home()/urls/<host>/<path>``;
    * a relative path with ``repo_id`` is looked up in ``root`` (if given), then
      in ``data_home()/<repo_id>/<path>``, then in ``data_home()/<path>``, and
      otherwise downloaded from the hub into ``data_home()/<repo_id>/<path>``; a
      glob is answered from disk once the hub's listing of it was fetched in full
      (kept under ``<repo_id>/.xares/globs``), else listed on the hub and completed;
    * anything else is a local path or glob, relative to ``root`` or the cwd.

    Returns absolute paths in pattern order without duplicates. Raises
    ``MissingShardError`` once, naming every shard that is absent and cannot be
    fetched (``download=False``, offline: ``HF_HUB_OFFLINE=1`` /
    ``XARES_OFFLINE=1`` when ``offline`` is None, or a server that cannot be
    reached). ``task`` only personalises the fetch command printed in that
    error. ``cache_dir`` is the download cache (a run passes its
    ``paths.data_dir``); ``None`` means ``data_home()``.
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    if offline is None:
        offline = _offline_from_env()
    may_fetch = download and not offline
    base = Path(root).expanduser() if root is not None else None
    cache = Path(cache_dir).expanduser().resolve() if cache_dir is not None else data_home()

    planned: list[Path | _Remote] = []
    missing: list[MissingShard] = []
    for pattern in patterns:
        for shard in expand_pattern(os.fspath(pattern)):
            for item in _plan(shard, repo_id, base, cache, may_fetch):
                if isinstance(item, MissingShard):
                    missing.append(item)
                elif isinstance(item, _Remote) and not may_fetch:
                    missing.append(item.as_missing())
                else:
                    planned.append(item)

    if missing:
        raise MissingShardError.build(missing, download=download, task=task, cache=cache)

    result: list[str] = []
    seen: set[str] = set()
    unfetched: list[MissingShard] = []
    reason: str | None = None
    for item in planned:
        if isinstance(item, _Remote):
            try:
                paths = _fetch(item, progress)
            except _Unreachable as err:
                # Kept for the one error below; once its server is found down, the shards
                # after this one fail without a request (see _failed_on).
                _failed_on(_server(item), err)
                reason = reason or str(err)
                unfetched.append(item.as_missing())
                continue
        else:
            paths = [item]
        for path in paths:
            key = str(path)
            if key not in seen:
                seen.add(key)
                result.append(key)
    if unfetched:
        raise MissingShardError.build(unfetched, task=task, cache=cache, reason=reason)
    return result


def _plan(
    shard: str, repo_id: str | None, base: Path | None, cache: Path, may_fetch: bool
) -> list[_Planned]:
    if _URL_RE.match(shard):
        dest = _url_cache_path(shard, cache)
        return [dest if dest.is_file() else _Remote(shard, shard, dest)]
    if shard.startswith("file://"):
        shard = urllib.request.url2pathname(urllib.parse.urlsplit(shard).path)

    as_path = Path(shard).expanduser()
    if repo_id and not as_path.is_absolute():
        return _plan_hub(shard, repo_id, base, cache, may_fetch)

    full = as_path if as_path.is_absolute() else (base or Path.cwd()) / as_path
    full = Path(os.path.abspath(full))
    if _GLOB_CHARS.search(shard):
        matches = sorted(glob.glob(str(full), recursive=True))
        files = [Path(m) for m in matches if os.path.isfile(m)]
        return list(files) or [MissingShard(shard, str(full))]
    return [full] if full.is_file() else [MissingShard(shard, str(full))]


def _plan_hub(
    shard: str, repo_id: str, base: Path | None, cache: Path, may_fetch: bool
) -> list[_Planned]:
    parts = _safe_parts(shard, "repository path")
    filename = "/".join(parts)
    # Downloads go to <cache>/<repo_id>/<path>, the layout of
    # `hf download <repo_id> --repo-type dataset --local-dir <cache>/<repo_id>`: the two
    # challenge repositories stay apart, paths stay readable, and caches from
    # earlier versions stay valid. <cache>/<path> (a manual `--local-dir <cache>`)
    # is read too, so either way of fetching by hand works.
    repo_dir = cache.joinpath(*_safe_parts(repo_id, "repo_id"))
    places = ([base] if base is not None else []) + [repo_dir, cache]
    remote = _Remote(
        shard,
        hub_url(repo_id, filename),
        repo_dir.joinpath(*parts),
        repo_id=repo_id,
        filename=filename,
        local_dir=repo_dir,
        is_glob=bool(_GLOB_CHARS.search(shard)),
        places=tuple(places),
    )
    if remote.is_glob:
        return _plan_hub_glob(remote, may_fetch)
    found = _find(filename, remote.places)
    return [found] if found is not None else [remote]


def _plan_hub_glob(remote: _Remote, may_fetch: bool) -> list[_Planned]:
    """A glob inside a repository: from disk only when what is there is known to be all of it.

    A fetch interrupted after some of a glob's files leaves a subset on disk that a glob
    would match silently; the listing written after a complete fetch tells the two apart.
    """
    listed = _read_listing(remote)
    if listed is not None:
        found = [_find(name, remote.places) for name in listed]
        if all(found):
            return found  # type: ignore[return-value]  # all are paths
        if may_fetch:
            return [remote]  # listed again: the repository may have changed since
        return [
            MissingShard(remote.shard, str(remote.local_dir.joinpath(*name.split("/"))), url)
            for name, path in zip(listed, found)
            if path is None
            for url in [hub_url(remote.repo_id, name)]
        ]
    on_disk: list[Path] = []
    for where in remote.places:
        on_disk = _glob_files(Path(os.path.abspath(where.joinpath(*remote.filename.split("/")))))
        if on_disk:
            break
    if may_fetch:
        return [dataclasses.replace(remote, on_disk=tuple(on_disk))]
    if on_disk:
        _warn_unchecked(remote, on_disk, "the hub may not be asked (offline)")
        return list[Path | _Remote | MissingShard](on_disk)
    return [remote]


def _warn_unchecked(remote: _Remote, on_disk: list[Path], why: str) -> None:
    log.warning(
        "%s: using the %d file(s) on disk that match it in %s; %s, so whether they are all "
        "of the repository's matches cannot be checked (a fetch that was cut short leaves "
        "a part). Resolve it once with network access to record the full listing.",
        remote.shard,
        len(on_disk),
        remote.repo_id,
        why,
    )


def _find(name: str, places: Iterable[Path]) -> Path | None:
    """The first of ``places`` that holds the repository file ``name``."""
    for where in places:
        candidate = Path(os.path.abspath(where.joinpath(*name.split("/"))))
        if candidate.is_file():
            return candidate
    return None


def _glob_files(pattern: Path) -> list[Path]:
    return [Path(m) for m in sorted(glob.glob(str(pattern), recursive=True)) if os.path.isfile(m)]


def _listing_path(remote: _Remote) -> Path:
    digest = hashlib.sha1(remote.filename.encode()).hexdigest()
    return remote.local_dir / ".xares" / "globs" / f"{digest}.json"


def _read_listing(remote: _Remote) -> list[str] | None:
    """The files the hub listed for ``remote``'s glob when it was last fetched in full."""
    path = _listing_path(remote)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("ignoring the unreadable glob listing %s (%s)", path, err)
        return None
    if not isinstance(record, dict) or record.get("pattern") != remote.filename:
        return None
    files = record.get("files")
    if not files or not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return [_safe_name(name) for name in files]


def _write_listing(remote: _Remote, names: list[str]) -> None:
    path = _listing_path(remote)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"repo_id": remote.repo_id, "pattern": remote.filename, "files": names}
    # Written to a temporary file and renamed, so a reader never finds half a listing.
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as tmp:
        try:
            json.dump(record, tmp, indent=1)
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)


def _safe_name(name: str) -> str:
    return "/".join(_safe_parts(name, "repository path"))


def _missing_message(
    missing: list[MissingShard], reason: str, task: str | None, cache: Path | None = None
) -> str:
    remote = [item for item in missing if item.url]
    if remote:
        head = f"{len(missing)} shard(s) are missing ({len(remote)} remote, not fetched: {reason}):"
    else:
        head = f"{len(missing)} shard pattern(s) match no file:"
    lines = [head]
    for item in missing[:MAX_LISTED]:
        lines.append(f"  {item.shard}")
        lines.append(f"      expected at {item.path}")
        if item.url:
            lines.append(f"      from {item.url}")
        else:
            lines.append("      (a local path or glob that matches no file)")
    if len(missing) > MAX_LISTED:
        lines.append(f"  ... and {len(missing) - MAX_LISTED} more")
    if remote:
        name = task or "<task>"
        lines += [
            "Fetch them on a machine with network access with",
            f"  make data TASK={name}",
            f"  python -m xares.data.prefetch task={name}",
            "or set paths.data_dir (or XARES_DATA_HOME) to a directory that already holds them "
            f"(now {cache or data_home()}), or HF_ENDPOINT to a reachable mirror (now {hf_endpoint()}).",
        ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- download


class _QuietTqdm(tqdm):
    """A bar that never draws, for ``progress=False`` (huggingface_hub takes a class)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _fetch(item: _Remote, progress: bool) -> list[Path]:
    if item.repo_id is None:
        _require_answer(_server(item))
        return [download_file(item.url, item.dest, progress=progress)]
    if not item.is_glob:
        _require_answer(_server(item))
        return [_fetch_hub_file(item, item.filename, progress)]
    try:
        _require_answer(_server(item))
        names = _list_hub(item)
    except _Unreachable as err:
        if not item.on_disk:
            raise
        # The same files an offline run would use (a manual full copy, most likely).
        _warn_unchecked(item, list(item.on_disk), f"the hub did not answer ({err})")
        return list(item.on_disk)
    paths = [_find(name, item.places) or _fetch_hub_file(item, name, progress) for name in names]
    _write_listing(item, names)
    return paths


# --------------------------------------------------------------------------- reachability


@dataclass(frozen=True)
class _Verdict:
    checked: float  # _now() when it was asked
    down: str | None  # why the server cannot be used; None: it answers
    failed: int = 0  # shards that failed for want of an answer since it was last asked


_servers: dict[str, _Verdict] = {}
_servers_lock = threading.Lock()


def _now() -> float:
    return time.monotonic()


def _server(item: _Remote) -> str:
    """What to ask whether ``item`` can be fetched: the hub endpoint, or the URL's server."""
    if item.repo_id is not None:
        return hf_endpoint()
    split = urllib.parse.urlsplit(item.url)
    return f"{split.scheme.lower()}://{split.netloc.lower()}"


def _probe_timeout() -> float:
    """huggingface_hub's timeout for the metadata request that starts each hub download.

    Read at call time, like ``hf_endpoint``: the library reads it once, at import.
    """
    try:
        value = float(os.environ.get("HF_HUB_ETAG_TIMEOUT", ""))
    except ValueError:
        value = 0.0
    return value if value > 0 else float(hf_constants.HF_HUB_ETAG_TIMEOUT)


def _probe(server: str) -> str | None:
    """``None`` when ``server`` gives any HTTP answer, else why it gives none.

    Any status counts as an answer: a 503 or 429 is the downloads' own retries' business,
    and a 404 or 401 their errors'. One request, no retries, through huggingface_hub's
    client so that its proxy and certificate settings apply.
    """
    timeout = _probe_timeout()
    try:
        get_session().head(server + "/", timeout=timeout, follow_redirects=False)
    except (hf_errors.HTTPError, OSError) as err:
        return (
            f"no usable answer from {server}: {err or type(err).__name__} (asked once, "
            f"waiting up to {timeout:g} s, HF_HUB_ETAG_TIMEOUT)"
        )
    return None


def _require_answer(server: str) -> None:
    """Raise ``_Unreachable`` unless ``server`` answered when last asked (asking if not lately)."""
    with _servers_lock:  # concurrent resolvers wait for one probe instead of each sending one
        verdict = _servers.get(server)
        if verdict is None or _now() - verdict.checked > PROBE_KEPT_S:
            verdict = _Verdict(_now(), _probe(server))
            _servers[server] = verdict
    if verdict.down:
        raise _Unreachable(verdict.down, server)


def _failed_on(server: str, error: _Unreachable) -> None:
    """Decide whether ``server`` is down for later shards, after one failed for want of an answer.

    The first such shard asks the server again: if it is gone, every later shard fails at
    once; if it still answers, only this shard failed. A second failure marks it down
    without asking, as each shard has waited out huggingface_hub's retries (minutes).
    """
    with _servers_lock:
        verdict = _servers.get(server)
        if verdict is not None and verdict.down:
            return
        failed = (verdict.failed if verdict is not None else 0) + 1
        down = _probe(server) if failed == 1 else str(error)
        _servers[server] = _Verdict(_now(), down, failed)


# --------------------------------------------------------------------------- transfers


def _fetch_hub_file(item: _Remote, name: str, progress: bool) -> Path:
    tqdm_class = None if progress else _QuietTqdm
    dest = item.local_dir.joinpath(*name.split("/"))
    with _claim(dest):
        if not dest.is_file():  # another process may have finished it while we waited
            try:
                with _hub_errors(item, name):
                    hf_hub_download(
                        item.repo_id,
                        name,
                        repo_type=REPO_TYPE,
                        local_dir=item.local_dir,
                        endpoint=hf_endpoint(),
                        tqdm_class=tqdm_class,
                    )
            finally:
                _drop_hub_lock(item.local_dir, name)
            log.info("downloaded %s from %s", name, item.repo_id)
    return dest


def _drop_hub_lock(local_dir: Path, name: str) -> None:
    """Remove the lock file huggingface_hub keeps for ``name``, whether the download worked or not.

    Called under ``_claim``, so no other xares process is downloading ``name`` meanwhile.
    """
    try:
        from huggingface_hub._local_folder import get_local_download_paths

        path = get_local_download_paths(local_dir, name).lock_path
    except Exception:  # a layout this version of huggingface_hub no longer has
        return
    with contextlib.suppress(OSError):
        path.unlink()


def _list_hub(item: _Remote) -> list[str]:
    """The repository files ``item``'s glob matches, sorted like a glob on disk."""
    # Listing only the folder above the first wildcard keeps it to one page for
    # the challenge repos, which hold thousands of shards.
    fixed = item.filename[: _GLOB_CHARS.search(item.filename).start()]
    folder = fixed.rsplit("/", 1)[0] if "/" in fixed else None
    # fnmatch's '*' also crosses '/'; listing one level when the pattern has none
    # below the folder keeps the match to what a glob on disk would give.
    below = item.filename[len(folder) + 1 :] if folder else item.filename
    with _hub_errors(item, item.filename):
        entries = HfApi(endpoint=hf_endpoint()).list_repo_tree(
            item.repo_id, path_in_repo=folder, recursive="/" in below, repo_type=REPO_TYPE
        )
        names = [entry.path for entry in entries if isinstance(entry, RepoFile)]
    matches = sorted(filter_repo_objects(names, allow_patterns=[item.filename]))
    if not matches:
        raise RemoteNotFoundError(
            f"no file in the dataset repository {item.repo_id} at {hf_endpoint()} matches "
            f"{item.filename!r}. Check the pattern and repo_id.",
            item.url,
            404,
        )
    return matches


@contextlib.contextmanager
def _hub_errors(item: _Remote, name: str) -> Iterator[None]:
    """huggingface_hub's errors, restated with the shard, the repo and what to change."""
    where = f"the dataset repository {item.repo_id} at {hf_endpoint()}"
    url = hub_url(item.repo_id, name)
    try:
        yield
    except (hf_errors.RemoteEntryNotFoundError, hf_errors.RevisionNotFoundError) as err:
        raise RemoteNotFoundError(
            f"{name} does not exist in {where} (HTTP 404). Check the shard name and repo_id, "
            "and HF_ENDPOINT.",
            url,
            404,
        ) from err
    except (hf_errors.RepositoryNotFoundError, hf_errors.GatedRepoError) as err:
        raise DownloadError(
            f"{where} does not exist or refuses access ({err.response.status_code}). Check "
            "repo_id; for a gated or private repository set HF_TOKEN to a token that has access.",
            url,
            err.response.status_code,
        ) from err
    except hf_errors.LocalEntryNotFoundError as err:
        # What huggingface_hub raises once its retries of the metadata request failed.
        raise _Unreachable(
            f"no usable answer from {hf_endpoint()}: {err.__cause__ or err}"
        ) from err
    except hf_errors.HfHubHTTPError as err:
        raise _status_error(url, err, _REPO_ACCESS) from err
    except hf_errors.HTTPError as err:  # transport errors: refused, reset, timed out
        raise _Unreachable(f"no usable answer from {hf_endpoint()}: {err}") from err


_REPO_ACCESS = "For a gated or private repository set HF_TOKEN to a token that has access."


def _is_hub_host(url: str) -> bool:
    """Whether ``url`` is served by the hub endpoint, the only host a token is meant for."""
    return urllib.parse.urlsplit(url).netloc.lower() == (
        urllib.parse.urlsplit(hf_endpoint()).netloc.lower()
    )


def _access_hint(url: str, token_sent: bool) -> str:
    """What can get past a 401/403 for the plain URL ``url``."""
    if not _is_hub_host(url):
        return (
            f"No credentials are sent to {urllib.parse.urlsplit(url).hostname} (HF_TOKEN goes "
            f"to the hub, {hf_endpoint()}, only): use a URL that grants access by itself "
            "(e.g. a signed URL), or download the file and list its local path instead."
        )
    if token_sent:
        return "HF_TOKEN was sent; use a token that has access to this file."
    return "Set HF_TOKEN to a token that has access to this file."


def _status_error(url: str, err: hf_errors.HfHubHTTPError, access: str) -> DownloadError:
    status = err.response.status_code if err.response is not None else None
    if status in (404, 410):
        return RemoteNotFoundError(
            f"{url} does not exist (HTTP {status}). Check the shard name (and repo_id and "
            f"HF_ENDPOINT, now {hf_endpoint()}, for a hub path).",
            url,
            status,
        )
    if status in (401, 403):
        return DownloadError(f"access to {url} was refused (HTTP {status}). {access}", url, status)
    return DownloadError(
        f"downloading {url} failed with HTTP {status}; the server may be "
        "down or overloaded: run again later, or set HF_ENDPOINT to a mirror.",
        url,
        status,
    )


def download_file(url: str, dest: str | Path, *, progress: bool = True) -> Path:
    """Download the plain URL ``url`` to ``dest`` atomically, once; return ``dest``.

    ``huggingface_hub``'s ``http_get`` streams the body, retrying and resuming
    with a Range request after a dropped connection; it writes to a temporary
    file in the same folder that is renamed onto ``dest`` only once complete,
    so ``dest`` never exists half-written. A download that was killed is not
    resumed by the next run (nothing would tell whether the server's file changed
    meanwhile): it starts over, and its temporary file is removed. The hub's token
    (``HF_TOKEN``) is sent only when ``url`` is on the hub endpoint's host.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    token_sent = False
    headers = None
    if _is_hub_host(url):
        headers = build_hf_headers()
        token_sent = "authorization" in {key.lower() for key in headers}
    with _claim(dest):
        if dest.is_file():  # another process finished it while we waited
            return dest
        # Holding the lock, no other process is writing one: these are left by a kill.
        for stale in dest.parent.glob(f".{glob.escape(dest.name)}.*.incomplete"):
            stale.unlink(missing_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=dest.parent, prefix=f".{dest.name}.", suffix=".incomplete", delete=False
        ) as tmp:
            try:
                try:
                    http_get(
                        url,
                        tmp,  # type: ignore[arg-type]
                        headers=headers,
                        displayed_filename=dest.name,
                        tqdm_class=None if progress else _QuietTqdm,
                    )
                except hf_errors.HfHubHTTPError as err:
                    raise _status_error(url, err, _access_hint(url, token_sent)) from err
                except hf_errors.HTTPError as err:
                    raise _Unreachable(f"no usable answer from {url}: {err}", url) from err
                except OSError as err:  # http_get's size check after a short body
                    raise DownloadError(f"could not download {url}: {err}", url) from err
                tmp.flush()
                # The rename below only promises completeness if the bytes reached the disk.
                os.fsync(tmp.fileno())
            except BaseException:
                tmp.close()
                os.unlink(tmp.name)
                raise
        os.replace(tmp.name, dest)
    log.info("downloaded %s to %s", url, dest)
    return dest


@contextlib.contextmanager
def _claim(dest: Path) -> Iterator[None]:
    """Hold the right to write ``dest``.

    A second process (another DDP rank, a parallel prefetch) waits here and then
    finds the finished file instead of fetching the same bytes again. The lock
    file is hidden next to ``dest`` and removed when the fetch ends, finished or failed.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    path = dest.with_name(f".{dest.name}.lock")
    if fcntl is None:  # filelock removes its lock file on release on Windows
        with FileLock(path):
            yield
        return
    fd = _lock(path)
    try:
        yield
    finally:
        # Removed while still held: a process that was waiting finds, once it holds the lock,
        # that its file is no longer at the path (see _lock), so no two ever write at once.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _lock(path: Path) -> int:
    """An open descriptor holding an exclusive lock on the file now at ``path``."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        # The holder before us removed the file it locked; this lock guards nothing.
        if current is not None and os.path.samestat(os.fstat(fd), current):
            return fd
        os.close(fd)

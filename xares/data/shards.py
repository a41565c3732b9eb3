"""Resolve shard patterns to local files, downloading remote shards into a cache.

A dataset names its shards as local paths, globs, brace patterns, URLs, or paths
inside a Hugging Face dataset repository (``repo_id``). ``resolve_shards`` turns
all of those into a flat list of local files. Remote files are fetched once into
``data_home()`` and read from there afterwards, so training never touches the
network once the cache is warm.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

try:  # POSIX only; see _claim() for what happens without it.
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DownloadError",
    "MissingShardError",
    "RemoteNotFoundError",
    "data_home",
    "download_file",
    "expand_pattern",
    "format_bytes",
    "hf_endpoint",
    "hub_url",
    "resolve_shards",
]

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_DATA_HOME = "xares_data"

# Read at call time (not bound as default arguments) so tests and callers can
# tune them by assigning to the module attribute.
RETRIES = 5
BACKOFF_BASE = 1.0  # seconds before the first retry; doubles each time
BACKOFF_MAX = 60.0
TIMEOUT = 60.0  # seconds of socket inactivity before a connection counts as dead
CHUNK_SIZE = 1 << 20
MAX_LISTED = 10

_URL_RE = re.compile(r"^https?://", re.IGNORECASE)
_GLOB_CHARS = re.compile(r"[*?\[]")
_INT_RANGE = re.compile(r"^([+-]?\d+)\.\.([+-]?\d+)(?:\.\.([+-]?\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.([+-]?\d+))?$")
_TRUTHY = {"1", "true", "yes", "on"}


class MissingShardError(FileNotFoundError):
    """Shards that are neither on disk nor allowed to be fetched.

    Raised once per ``resolve_shards`` call with every missing shard, so a user
    fixes the whole set in one go instead of discovering them one by one.
    """

    def __init__(self, message: str, missing: Iterable[MissingShard] = ()) -> None:
        # Only the message goes into args so the exception survives pickling
        # across DataLoader worker processes.
        super().__init__(message)
        self.missing = list(missing)

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
    ) -> MissingShardError:
        """The error for ``missing``; ``download=False`` explains why remote ones were not fetched."""
        missing = list(missing)
        if not download:
            reason = "downloading is disabled (download=False)"
        else:
            reason = "offline mode is on (offline=True, HF_HUB_OFFLINE=1 or XARES_OFFLINE=1)"
        return cls(_missing_message(missing, reason, task, cache), missing)


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


_Planned = Path | _Remote | MissingShard


class _Retry(Exception):
    """Internal: this attempt failed in a way another attempt may fix."""


# --------------------------------------------------------------------------- patterns


def expand_pattern(pattern: str) -> list[str]:
    """Expand shell-style braces: ``{000..012}``, ``{1..4}``, ``{a,b}``, ``{0..10..2}``.

    Follows bash: a numeric range is zero-padded to the width of the wider bound
    as written when either bound has a leading zero; several groups expand as a
    cartesian product with the leftmost group varying slowest; a group with
    neither a comma nor a range (``{a}``) stays literal.
    """
    start = 0
    while True:
        open_at = pattern.find("{", start)
        if open_at < 0:
            return [pattern]
        close_at = _matching_brace(pattern, open_at)
        if close_at < 0:
            return [pattern]
        choices = _expand_group(pattern[open_at + 1 : close_at])
        if choices is None:
            start = open_at + 1
            continue
        head = pattern[:open_at]
        tails = expand_pattern(pattern[close_at + 1 :])
        return [head + choice + tail for choice in choices for tail in tails]


def _matching_brace(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _split_top_level(body: str) -> list[str]:
    parts, depth, last = [], 0, 0
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[last:i])
            last = i + 1
    parts.append(body[last:])
    return parts


def _expand_group(body: str) -> list[str] | None:
    parts = _split_top_level(body)
    if len(parts) > 1:
        return [item for part in parts for item in expand_pattern(part)]
    match = _INT_RANGE.match(body)
    if match:
        lo_text, hi_text, step_text = match.groups()
        lo, hi = int(lo_text), int(hi_text)
        step = abs(int(step_text)) if step_text else 1
        step = step or 1
        padded = any(_has_leading_zero(t) for t in (lo_text, hi_text))
        width = max(len(lo_text), len(hi_text)) if padded else 0
        values = range(lo, hi + 1, step) if lo <= hi else range(lo, hi - 1, -step)
        return [f"{v:0{width}d}" for v in values]
    match = _CHAR_RANGE.match(body)
    if match:
        lo, hi = ord(match.group(1)), ord(match.group(2))
        step = abs(int(match.group(3))) if match.group(3) else 1
        step = step or 1
        values = range(lo, hi + 1, step) if lo <= hi else range(lo, hi - 1, -step)
        return [chr(v) for v in values]
    return None


def _has_leading_zero(number: str) -> bool:
    digits = number.lstrip("+-")
    return len(digits) > 1 and digits.startswith("0")


# --------------------------------------------------------------------------- locations


def data_home() -> Path:
    """The shard cache: ``$XARES_DATA_HOME`` or ``./xares_data`` (relative to the cwd now)."""
    raw = os.environ.get("XARES_DATA_HOME") or DEFAULT_DATA_HOME
    return Path(raw).expanduser().resolve()


def hf_endpoint() -> str:
    """The Hugging Face endpoint: ``$HF_ENDPOINT`` (a mirror) or the public hub."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_url(repo_id: str, path: str) -> str:
    """Download URL of ``path`` in the dataset repository ``repo_id`` (branch ``main``)."""
    quoted = urllib.parse.quote(path.lstrip("/"), safe="/")
    return f"{hf_endpoint()}/datasets/{repo_id}/resolve/main/{quoted}"


def _offline_from_env() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in _TRUTHY
        for name in ("HF_HUB_OFFLINE", "XARES_OFFLINE")
    )


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


def _is_hub_url(url: str) -> bool:
    endpoint = urllib.parse.urlsplit(hf_endpoint()).netloc.lower()
    return urllib.parse.urlsplit(url).netloc.lower() == endpoint


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
      in ``data_home()/<repo_id>/<path>``, and otherwise downloaded from the hub;
    * anything else is a local path or glob, relative to ``root`` or the cwd.

    Returns absolute paths in pattern order without duplicates. Raises
    ``MissingShardError`` once, naming every shard that is absent and cannot be
    fetched (``download=False``, or offline: ``HF_HUB_OFFLINE=1`` /
    ``XARES_OFFLINE=1`` when ``offline`` is None). ``task`` only personalises
    the fetch command printed in that error. ``cache_dir`` is the download cache
    (a run passes its ``paths.data_dir``); ``None`` means ``data_home()``.
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
            for item in _plan(shard, repo_id, base, cache):
                if isinstance(item, MissingShard):
                    missing.append(item)
                elif isinstance(item, _Remote) and not may_fetch:
                    missing.append(MissingShard(item.shard, str(item.dest), item.url))
                else:
                    planned.append(item)

    if missing:
        raise MissingShardError.build(missing, download=download, task=task, cache=cache)

    remote = [item for item in planned if isinstance(item, _Remote)]
    result: list[str] = []
    seen: set[str] = set()
    done = 0
    for item in planned:
        if isinstance(item, _Remote):
            done += 1
            label = f"[{done}/{len(remote)}] {item.dest.name}" if len(remote) > 1 else None
            path = download_file(item.url, item.dest, progress=progress, desc=label)
        else:
            path = item
        key = str(path)
        if key not in seen:
            seen.add(key)
            result.append(key)
    return result


def _plan(shard: str, repo_id: str | None, base: Path | None, cache: Path) -> list[_Planned]:
    if _URL_RE.match(shard):
        dest = _url_cache_path(shard, cache)
        return [dest if dest.is_file() else _Remote(shard, shard, dest)]
    if shard.startswith("file://"):
        shard = urllib.request.url2pathname(urllib.parse.urlsplit(shard).path)

    as_path = Path(shard).expanduser()
    if repo_id and not as_path.is_absolute():
        return _plan_hub(shard, repo_id, base, cache)

    full = as_path if as_path.is_absolute() else (base or Path.cwd()) / as_path
    full = Path(os.path.abspath(full))
    if _GLOB_CHARS.search(shard):
        matches = sorted(glob.glob(str(full), recursive=True))
        files = [Path(m) for m in matches if os.path.isfile(m)]
        return list(files) or [MissingShard(shard, str(full))]
    return [full] if full.is_file() else [MissingShard(shard, str(full))]


def _plan_hub(shard: str, repo_id: str, base: Path | None, cache: Path) -> list[_Planned]:
    parts = _safe_parts(shard, "repository path")
    repo_dir = cache.joinpath(*_safe_parts(repo_id, "repo_id"))
    cached = repo_dir.joinpath(*parts)
    if _GLOB_CHARS.search(shard):
        # The hub resolve endpoint serves single files, so a glob can only be
        # answered from what is already on disk.
        for where in ([base] if base is not None else []) + [repo_dir]:
            matches = sorted(glob.glob(str(where.joinpath(*parts)), recursive=True))
            files = [Path(os.path.abspath(m)) for m in matches if os.path.isfile(m)]
            if files:
                return list(files)
        return [MissingShard(shard, str(cached), None)]
    if base is not None:
        local = Path(os.path.abspath(base.joinpath(*parts)))
        if local.is_file():
            return [local]
    if cached.is_file():
        return [cached]
    return [_Remote(shard, hub_url(repo_id, "/".join(parts)), cached)]


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


def download_file(
    url: str,
    dest: str | Path,
    *,
    progress: bool = True,
    retries: int | None = None,
    backoff: float | None = None,
    desc: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically; return ``dest``.

    The body streams into a ``.part`` file that is renamed onto ``dest`` only
    once its size matches the server's, so ``dest`` never exists half-written.
    Dropped connections and short bodies are retried with exponential backoff,
    resuming from the partial file with an HTTP Range request.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    retries = RETRIES if retries is None else retries
    backoff = BACKOFF_BASE if backoff is None else backoff
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _claim(dest) as part:
        if dest.is_file():  # another process finished it while we waited
            return dest
        attempt = 0
        while True:
            try:
                size = _fetch_once(url, part, progress=progress, desc=desc or dest.name)
                break
            except DownloadError:
                raise
            except (_Retry, OSError, http.client.HTTPException) as err:
                attempt += 1
                if attempt > retries:
                    raise DownloadError(
                        f"could not download {url} after {attempt} attempt(s): {err}. "
                        f"The partial data is kept in {part} and the next try resumes from it.",
                        url,
                    ) from err
                delay = min(BACKOFF_MAX, backoff * 2 ** (attempt - 1))
                log.warning(
                    "download of %s failed (%s); retry %d/%d in %.1fs",
                    url,
                    err,
                    attempt,
                    retries,
                    delay,
                )
                time.sleep(delay)
        os.replace(part, dest)
    log.info("downloaded %s (%s) to %s", url, format_bytes(size), dest)
    return dest


@contextlib.contextmanager
def _claim(dest: Path) -> Iterator[Path]:
    """Own the right to write ``dest``; yield the partial-file path to use.

    With ``fcntl``, an exclusive lock on ``<dest>.lock`` serialises writers, so
    the partial file can have a fixed name: a download killed by Ctrl-C or a
    job limit resumes from it on the next run, and a second process (another
    DDP rank, a parallel prefetch) waits and then finds the finished file
    instead of fetching the same bytes again. The lock file is removed only
    once ``dest`` exists: a process still holding the old (unlinked) lock or
    creating a fresh one then re-checks ``dest`` under its lock and stops, so
    two writers can never share the partial file. Without ``fcntl`` a
    per-process partial name still keeps concurrent writers from corrupting
    each other; they just cannot share or resume the work.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield dest.with_name(f"{dest.name}.{os.getpid()}.part")
        return
    lock_path = dest.with_name(dest.name + ".lock")
    with open(lock_path, "a+b") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish downloading %s", dest)
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield dest.with_name(dest.name + ".part")
            if dest.is_file():
                lock_path.unlink(missing_ok=True)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _fetch_once(url: str, part: Path, *, progress: bool, desc: str) -> int:
    """One HTTP attempt, appending to ``part`` when the server honours Range."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "xares-shards/1"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    token = os.environ.get("HF_TOKEN")
    if token and _is_hub_url(url):
        # Unredirected: the hub redirects large files to a CDN with signed URLs,
        # which must not receive the token (and reject a second auth method).
        request.add_unredirected_header("Authorization", f"Bearer {token}")

    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as err:
        err.close()
        _raise_for_status(url, err.code, part, offset)
        raise  # unreachable: _raise_for_status always raises

    with response:
        total: int | None
        if response.status == 206 and offset:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Retry(f"server resumed at byte {start}, expected {offset}")
            mode = "ab"
        else:
            # 200 to a Range request: the server sends the whole file again.
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None

        received = offset
        with open(part, mode) as out, _progress_bar(total, offset, desc, progress) as bar:
            while True:
                chunk = response.read(CHUNK_SIZE)
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            out.flush()
            # The rename below is only a promise of completeness if the bytes
            # reached the disk before it.
            os.fsync(out.fileno())

    if total is not None and received != total:
        if received > total:
            part.unlink(missing_ok=True)  # inconsistent; resuming would keep garbage
        raise _Retry(f"connection ended after {received} of {total} bytes")
    return received


def _raise_for_status(url: str, status: int, part: Path, offset: int) -> None:
    if status in (404, 410):
        raise RemoteNotFoundError(
            f"{url} does not exist (HTTP {status}). Check the shard name and repo_id, "
            f"and HF_ENDPOINT (now {hf_endpoint()}).",
            url,
            status,
        )
    if status in (401, 403):
        raise DownloadError(
            f"access to {url} was refused (HTTP {status}). For a gated or private "
            "repository set HF_TOKEN to a token that has access.",
            url,
            status,
        )
    if status == 416 and offset:
        part.unlink(missing_ok=True)  # our partial file no longer fits the remote one
        raise _Retry("server rejected the resume range; restarting")
    if status in (408, 425, 429) or status >= 500:
        raise _Retry(f"HTTP {status}")
    raise DownloadError(f"downloading {url} failed with HTTP {status}", url, status)


def _parse_content_range(value: str | None) -> tuple[int, int | None]:
    match = re.match(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", value or "")
    if not match:
        raise _Retry(f"unusable Content-Range header {value!r}")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


class _NullBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool):
    if not enabled:
        return _NullBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety; never fail a download over it
        return _NullBar()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        leave=False,
    )


def format_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"  # pragma: no cover

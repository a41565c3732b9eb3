"""Resolve shard patterns to local files, downloading remote shards into a cache.

A dataset names its shards as local paths, globs, brace patterns, URLs, or paths
inside a Hugging Face dataset repository (``repo_id``). ``resolve_shards`` turns
all of those into a flat list of local files. Remote files are fetched once into
``data_home()`` (by :mod:`xares.data.download`) and read from there afterwards, so
training never touches the network once the cache is warm.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import re
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import braceexpand
from huggingface_hub import constants as hf_constants

from xares.data.download import (
    GLOB_CHARS,
    Unreachable,
    data_home,
    download_file,
    failed_on,
    fetch_hub_file,
    hf_endpoint,
    hub_url,
    list_hub,
    require_answer,
)

__all__ = ["MissingShard", "MissingShardError", "expand_pattern", "resolve_shards"]

log = logging.getLogger(__name__)

MAX_LISTED = 10

_URL_RE = re.compile(r"^https?://", re.IGNORECASE)
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


# --------------------------------------------------------------------------- cache paths


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
            except Unreachable as err:
                # Kept for the one error below; once its server is found down, the shards
                # after this one fail without a request (see _failed_on).
                failed_on(_server(item), err)
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
    if GLOB_CHARS.search(shard):
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
        is_glob=bool(GLOB_CHARS.search(shard)),
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


# --------------------------------------------------------------------------- fetch


def _fetch(item: _Remote, progress: bool) -> list[Path]:
    if item.repo_id is None:
        require_answer(_server(item))
        return [download_file(item.url, item.dest, progress=progress)]
    if not item.is_glob:
        require_answer(_server(item))
        return [fetch_hub_file(item.repo_id, item.filename, item.local_dir, progress)]
    try:
        require_answer(_server(item))
        names = list_hub(item.repo_id, item.filename)
    except Unreachable as err:
        if not item.on_disk:
            raise
        # The same files an offline run would use (a manual full copy, most likely).
        _warn_unchecked(item, list(item.on_disk), f"the hub did not answer ({err})")
        return list(item.on_disk)
    paths = [
        _find(name, item.places) or fetch_hub_file(item.repo_id, name, item.local_dir, progress)
        for name in names
    ]
    _write_listing(item, names)
    return paths


def _server(item: _Remote) -> str:
    """What to ask whether ``item`` can be fetched: the hub endpoint, or the URL's server."""
    if item.repo_id is not None:
        return hf_endpoint()
    split = urllib.parse.urlsplit(item.url)
    return f"{split.scheme.lower()}://{split.netloc.lower()}"

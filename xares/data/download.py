"""Downloads: files of Hugging Face dataset repositories and plain URLs, each fetched once,
atomically, by one process at a time, with errors that name the file and what to change.

The transfers themselves belong to ``huggingface_hub``: ``hf_hub_download`` for
files in a dataset repository (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``,
retries, the Xet transfer backend, copying from the user's HF cache) and its
``http_get`` for plain URLs (retries, and resuming after a connection dropped in
the middle of a download; a download that was killed starts over in the next run).

Those retries suit a server that stumbles, not one that is gone: against a hub that
never answers, each shard would wait minutes. So a server is first asked once, with
huggingface_hub's own metadata timeout (``HF_HUB_ETAG_TIMEOUT``), and a server that does
not answer at all fails every shard it holds at once (:func:`require_answer`,
:func:`failed_on`).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_DATA_HOME = "xares_data"
REPO_TYPE = "dataset"
GLOB_CHARS = re.compile(r"[*?\[]")

# How long a verdict on a server holds: one run's many datasets ask it once, and a process
# that lives longer (a notebook, a sweep) asks again, as the network may have come back.
PROBE_KEPT_S = 300.0


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


class Unreachable(DownloadError):
    """No usable answer from the server (no network, a wrong endpoint, an outage)."""


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


def require_answer(server: str) -> None:
    """Raise ``Unreachable`` unless ``server`` answered when last asked (asking if not lately)."""
    with _servers_lock:  # concurrent resolvers wait for one probe instead of each sending one
        verdict = _servers.get(server)
        if verdict is None or _now() - verdict.checked > PROBE_KEPT_S:
            verdict = _Verdict(_now(), _probe(server))
            _servers[server] = verdict
    if verdict.down:
        raise Unreachable(verdict.down, server)


def failed_on(server: str, error: Unreachable) -> None:
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


def fetch_hub_file(repo_id: str, name: str, local_dir: Path, progress: bool) -> Path:
    """The file ``name`` of the dataset repository ``repo_id``, downloaded into ``local_dir``
    (its layout kept) unless it is there already."""
    tqdm_class = None if progress else _QuietTqdm
    dest = local_dir.joinpath(*name.split("/"))
    with _claim(dest):
        if not dest.is_file():  # another process may have finished it while we waited
            try:
                with _hub_errors(repo_id, name):
                    hf_hub_download(
                        repo_id,
                        name,
                        repo_type=REPO_TYPE,
                        local_dir=local_dir,
                        endpoint=hf_endpoint(),
                        tqdm_class=tqdm_class,
                    )
            finally:
                _drop_hub_lock(local_dir, name)
            log.info("downloaded %s from %s", name, repo_id)
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


def list_hub(repo_id: str, pattern: str) -> list[str]:
    """The files of the dataset repository ``repo_id`` that the glob ``pattern`` matches,
    sorted like a glob on disk."""
    # Listing only the folder above the first wildcard keeps it to one page for
    # the challenge repos, which hold thousands of shards.
    fixed = pattern[: GLOB_CHARS.search(pattern).start()]
    folder = fixed.rsplit("/", 1)[0] if "/" in fixed else None
    # fnmatch's '*' also crosses '/'; listing one level when the pattern has none
    # below the folder keeps the match to what a glob on disk would give.
    below = pattern[len(folder) + 1 :] if folder else pattern
    with _hub_errors(repo_id, pattern):
        entries = HfApi(endpoint=hf_endpoint()).list_repo_tree(
            repo_id, path_in_repo=folder, recursive="/" in below, repo_type=REPO_TYPE
        )
        names = [entry.path for entry in entries if isinstance(entry, RepoFile)]
    matches = sorted(filter_repo_objects(names, allow_patterns=[pattern]))
    if not matches:
        raise RemoteNotFoundError(
            f"no file in the dataset repository {repo_id} at {hf_endpoint()} matches "
            f"{pattern!r}. Check the pattern and repo_id.",
            hub_url(repo_id, pattern),
            404,
        )
    return matches


@contextlib.contextmanager
def _hub_errors(repo_id: str, name: str) -> Iterator[None]:
    """huggingface_hub's errors, restated with the shard, the repo and what to change."""
    where = f"the dataset repository {repo_id} at {hf_endpoint()}"
    url = hub_url(repo_id, name)
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
        raise Unreachable(f"no usable answer from {hf_endpoint()}: {err.__cause__ or err}") from err
    except hf_errors.HfHubHTTPError as err:
        raise _status_error(url, err, _REPO_ACCESS) from err
    except hf_errors.HTTPError as err:  # transport errors: refused, reset, timed out
        raise Unreachable(f"no usable answer from {hf_endpoint()}: {err}") from err


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
                    raise Unreachable(f"no usable answer from {url}: {err}", url) from err
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


class _QuietTqdm(tqdm):
    """A bar that never draws, for ``progress=False`` (huggingface_hub takes a class)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)

"""Downloading one file safely: timeout, retries, resume, progress bar, checksum, atomic rename.

The file is written to a temporary ``.<name>.<random>.part`` file beside the destination and
renamed into place only after its size and MD5 match the published ones, so an interrupted or corrupt
download never leaves a file that looks valid: the destination either does not exist or is the
verified file.
The temporary file is removed on any failure, ``KeyboardInterrupt`` included.

Only ``urllib`` is used. A retry after a dropped connection asks the server for the missing bytes
(an HTTP ``Range`` request) and starts over if the server does not support it.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ._errors import ChecksumError, DownloadError
from ._paths import mirror_from_env

__all__ = ["FileSpec", "fetch", "candidate_urls", "file_md5", "verify_file"]

# Defaults for every download; tests lower the back-off to keep retries instant.
DEFAULT_TIMEOUT = 30.0   # seconds without any byte from the server before an attempt fails
DEFAULT_RETRIES = 3      # further attempts per URL after the first one fails on a transient error
DEFAULT_BACKOFF = 1.0    # seconds before the first retry; doubles each time
_CHUNK = 1 << 20
_USER_AGENT = "minicnn-datasets/0.1 (+urllib)"
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}


@dataclass(frozen=True)
class FileSpec:
    """A published file: its name, where it lives and how to recognise it.

    Attributes
    ----------
    name : str
        File name, used in the cache and appended to mirror base URLs.
    url : str
        The official address.
    md5 : str or None
        Hex MD5 digest of the official file; ``None`` to skip the check.
    size : int or None
        Size in bytes of the official file; ``None`` to skip the check.
    mirrors : tuple of str
        Further base URLs (or full URLs) tried after ``url``.
    """

    name: str
    url: str
    md5: str | None = None
    size: int | None = None
    mirrors: tuple = ()


class _Transient(Exception):
    """A failure worth retrying on the same URL (timeout, dropped connection, HTTP 5xx)."""


class _Permanent(Exception):
    """A failure that retrying the same URL will not fix (404, wrong checksum, unknown host)."""


def join_url(base, name):
    """``base`` if it already ends with ``name``, else ``base/name``."""
    if base.rstrip("/").rsplit("/", 1)[-1] == name:
        return base
    return base.rstrip("/") + "/" + name


def candidate_urls(spec, mirror=None, env_var=None):
    """List the URLs to try for ``spec``, in order, without duplicates.

    Order: ``mirror`` (a base URL or a ``pathlib.Path`` folder, or a list of them), then
    ``$env_var``, then ``$MINICNN_DATASETS_MIRROR``, then ``spec.url``, then ``spec.mirrors``.
    """
    if mirror is None:
        mirror = []
    elif isinstance(mirror, (str, os.PathLike)):
        mirror = [mirror]
    # A local folder given as a path (not a URL) is read through a file:// URL.
    bases = [Path(m).resolve().as_uri() if isinstance(m, os.PathLike) else m for m in mirror]
    bases += mirror_from_env(env_var)
    urls = [join_url(b, spec.name) for b in bases] + [spec.url]
    urls += [join_url(m, spec.name) for m in spec.mirrors]
    return list(dict.fromkeys(urls))


def file_md5(path):
    """Hex MD5 digest of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path, md5=None, size=None, *, label="verify_file"):
    """Raise :class:`ChecksumError` unless the file has the given size and MD5 (``None`` skips)."""
    path = Path(path)
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ChecksumError(f"{label}: '{path}' has {actual_size:,} bytes, expected {size:,}")
    if md5 is not None:
        actual = file_md5(path)
        if actual != md5.lower():
            raise ChecksumError(f"{label}: '{path}' has md5 {actual}, expected {md5.lower()}")


def fetch(url, dest, md5=None, size=None, *, mirrors=(), timeout=None, retries=None, backoff=None,
          progress=True):
    """Download ``url`` to ``dest``, verified, trying ``mirrors`` in turn if it fails.

    Parameters
    ----------
    url : str
        First URL to try (any scheme urllib handles: http, https, file).
    dest : str or path-like
        Final path. Its folder is created if needed. An existing file there is replaced only by a
        verified download.
    md5 : str, optional
        Expected hex MD5 digest.
    size : int, optional
        Expected size in bytes. Also stops a server that sends more than this.
    mirrors : sequence of str
        Further URLs tried in order after ``url`` fails.
    timeout : float, optional
        Seconds to wait for the connection and for each read; default ``DEFAULT_TIMEOUT``.
    retries : int, optional
        Extra attempts per URL after a transient failure (a read timeout, a dropped or refused
        connection, HTTP 5xx); default ``DEFAULT_RETRIES``. A retry resumes with an HTTP Range
        request when possible. An unknown host, an unreachable network, no connection within
        ``timeout``, HTTP 4xx and a wrong checksum are not retried: the next URL is tried.
    backoff : float, optional
        Seconds before the first retry, doubled for each further one; default ``DEFAULT_BACKOFF``.
    progress : bool
        Draw a progress bar on stderr (redrawn in place only when stderr is a terminal).

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    DownloadError
        If every URL failed; ``.failures`` lists ``(url, reason)`` pairs. No file is left behind.
    """
    dest = Path(dest)
    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    retries = DEFAULT_RETRIES if retries is None else int(retries)
    backoff = DEFAULT_BACKOFF if backoff is None else float(backoff)
    if retries < 0:
        raise ValueError(f"fetch: retries must be >= 0, received {retries}")
    if timeout <= 0:
        raise ValueError(f"fetch: timeout must be > 0, received {timeout}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = f"cannot create the folder '{dest.parent}' ({exc})"
        raise DownloadError(f"fetch: could not download {dest.name}: {reason}",
                            [(url, reason)]) from exc
    failures = []
    for candidate in dict.fromkeys([url, *mirrors]):
        try:
            _fetch_one(candidate, dest, md5, size, timeout, retries, backoff, progress)
            return dest
        except _Permanent as exc:
            failures.append((candidate, str(exc)))
        except _Transient as exc:
            failures.append((candidate, f"{exc} (gave up after {retries + 1} attempts)"))
    detail = "; ".join(f"{u}: {reason}" for u, reason in failures)
    raise DownloadError(f"fetch: could not download {dest.name}: {detail}", failures)


class _State:
    """Bytes received so far for one URL, and their running MD5."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.received = 0
        self.digest = hashlib.md5(usedforsecurity=False)


def _fetch_one(url, dest, md5, size, timeout, retries, backoff, progress):
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise _Permanent(f"cannot write to '{dest.parent}' ({exc})") from None
    tmp = Path(tmp_name)
    bar = Progress(url, dest, enabled=progress)
    try:
        with os.fdopen(fd, "wb") as out:
            state = _State()
            attempt = 0
            while True:
                try:
                    _attempt(url, out, state, timeout, size, bar)
                    break
                except _Transient:
                    attempt += 1
                    if attempt > retries:
                        raise
                    bar.note_retry(attempt, retries)
                    time.sleep(backoff * 2 ** (attempt - 1))
        if size is not None and state.received != size:
            raise _Permanent(f"received {state.received:,} bytes, expected {size:,}")
        if md5 is not None and state.digest.hexdigest() != md5.lower():
            raise _Permanent(f"checksum mismatch: md5 {state.digest.hexdigest()}, "
                             f"expected {md5.lower()}")
        os.replace(tmp, dest)
        bar.finish(ok=True)
    except BaseException:
        bar.finish(ok=False)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _attempt(url, out, state, timeout, size, bar):
    """One request: append what the server sends to ``out``; raise _Transient or _Permanent."""
    headers = {"User-Agent": _USER_AGENT}
    if state.received:
        headers["Range"] = f"bytes={state.received}-"
    try:
        request = urllib.request.Request(url, headers=headers)
    except ValueError as exc:  # not a URL at all
        raise _Permanent(f"invalid URL ({exc})") from None
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in (408, 425, 429) or exc.code >= 500:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise _Permanent(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, socket.gaierror):  # no DNS: offline, or no such host
            raise _Permanent(f"cannot resolve the host ({exc.reason})") from None
        if isinstance(exc.reason, (str, FileNotFoundError)):  # unknown url type, missing file://
            raise _Permanent(str(exc.reason)) from None
        if isinstance(exc.reason, TimeoutError):
            # No connection within the timeout: a firewalled or offline machine. Retrying would
            # only multiply the wait before the user hears that the network is not there.
            raise _Permanent(f"no connection within {timeout:g} s") from None
        if getattr(exc.reason, "errno", None) in _UNREACHABLE:
            raise _Permanent(f"network unreachable ({exc.reason})") from None
        raise _Transient(f"{type(exc.reason).__name__}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from None
    except ValueError as exc:
        raise _Permanent(f"invalid URL ({exc})") from None

    with response:
        status = getattr(response, "status", None) or 200
        if state.received:
            content_range = response.headers.get("Content-Range", "")
            if not (status == 206 and content_range.startswith(f"bytes {state.received}-")):
                out.seek(0)          # the server sent the whole file again: start over
                out.truncate()
                state.reset()
        length = response.headers.get("Content-Length")
        expected_end = state.received + int(length) if length and length.isdigit() else None
        if size is not None and expected_end is not None and expected_end != size:
            raise _Permanent(f"the server announces {expected_end:,} bytes, expected {size:,}")
        bar.start(size if size is not None else expected_end, state.received)
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _Transient(f"connection lost after {state.received:,} bytes "
                                 f"({type(exc).__name__}: {exc})") from None
            if not chunk:
                break
            out.write(chunk)
            state.digest.update(chunk)
            state.received += len(chunk)
            if size is not None and state.received > size:
                raise _Permanent(f"the server sent more than the expected {size:,} bytes")
            bar.update(state.received)
        out.flush()
    if expected_end is not None and state.received < expected_end:
        raise _Transient(f"connection closed after {state.received:,} of {expected_end:,} bytes")


class Progress:
    """A download progress bar on stderr.

    On a terminal the line is redrawn in place at most ten times a second. Elsewhere (a log file, CI)
    it prints at most six lines: the start, 25/50/75%, and the outcome.
    """

    def __init__(self, url, dest, enabled=True):
        self.url = url
        self.name = Path(dest).name
        self.enabled = enabled
        self.stream = sys.stderr
        self.tty = enabled and _isatty(self.stream)
        self.total = None
        self.done = 0
        self.started = None
        self.last_draw = 0.0
        self.quarter = 0

    def _write(self, text):
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not break the download
            self.enabled = False

    def start(self, total, already=0):
        if not self.enabled:
            return
        first = self.started is None
        if first:
            self.started = time.monotonic()
        self.total = total
        self.done = already
        self.quarter = int(4 * already / total) if total else 0
        if first and not self.tty:
            size = f" ({_fmt_bytes(total)})" if total else ""
            self._write(f"minicnn: downloading {self.url}{size}\n")
        self._draw(force=True)

    def update(self, done):
        if not self.enabled:
            return
        self.done = done
        if self.tty:
            self._draw()
        elif self.total:
            quarter = int(4 * done / self.total)
            if 0 < quarter < 4 and quarter > self.quarter:
                self.quarter = quarter
                self._write(f"minicnn:   {self.name}: {25 * quarter}% "
                            f"({_fmt_bytes(done)} of {_fmt_bytes(self.total)})\n")

    def note_retry(self, attempt, retries):
        if self.enabled:
            prefix = "\n" if self.tty else ""
            self._write(f"{prefix}minicnn:   {self.name}: connection problem, "
                        f"retry {attempt} of {retries}\n")

    def finish(self, ok):
        if not self.enabled or self.started is None:
            return
        elapsed = max(time.monotonic() - self.started, 1e-9)
        if self.tty:
            self._draw(force=True)
            self._write("\n")
        if ok:
            self._write(f"minicnn:   {self.name}: done, {_fmt_bytes(self.done)} "
                        f"in {elapsed:.1f} s\n")
        else:
            self._write(f"minicnn:   {self.name}: failed after {_fmt_bytes(self.done)}\n")
        self.started = None

    def _draw(self, force=False):
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        speed = self.done / max(now - self.started, 1e-9)
        if self.total:
            frac = min(self.done / self.total, 1.0)
            filled = int(24 * frac)
            line = (f"\r{self.name} {100 * frac:5.1f}% [{'#' * filled}{'.' * (24 - filled)}] "
                    f"{_fmt_bytes(self.done)}/{_fmt_bytes(self.total)} {_fmt_bytes(speed)}/s ")
        else:
            line = f"\r{self.name} {_fmt_bytes(self.done)} {_fmt_bytes(speed)}/s "
        self._write(line)


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _fmt_bytes(n):
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"

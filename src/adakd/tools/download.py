"""A resumable HTTP download with a progress bar and a sha256 (urllib only).

The bytes go to ``DEST.part``; an interrupted download keeps it, and the next call asks the server for the
rest (``Range: bytes=N-``; a 206 answer is appended, a 200 answer means the server ignores ranges and the
file restarts). Once complete, ``DEST.part`` is renamed to ``DEST``: ``DEST`` is always a whole file.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import AdakdError

_CHUNK = 1 << 20


class DownloadError(AdakdError):
    """The server cannot be reached, refused the file, or the transfer broke off (``.part`` kept to resume)."""

    def __init__(self, message: str, offline: bool = False, resumable: bool = False) -> None:
        super().__init__(message)
        self.offline = offline  #: the server could not be reached at all
        self.resumable = resumable  #: the transfer broke off: ``.part`` kept, the same call resumes it


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _complete_by_416(error: urllib.error.HTTPError, have: int) -> bool:
    """A 416 (range not satisfiable) whose ``Content-Range: bytes */SIZE`` says the ``.part`` is already whole."""
    match = re.fullmatch(r"bytes \*/(\d+)", (error.headers.get("Content-Range") or "").strip())
    return bool(match) and int(match.group(1)) == have


def download(url: str, dest: Path, timeout: float = 60.0, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest``, resuming ``dest.part`` when one is there; raise :class:`DownloadError`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have and _complete_by_416(exc, have):
            os.replace(part, dest)
            return dest
        raise DownloadError(f"the server answered {exc.code} {exc.reason} for {url}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {url} ({reason})", offline=True) from exc
    with response:
        resumed = have > 0 and response.status == 206
        if not resumed:
            have = 0  # a 200 answer is the whole file: start the .part again
        remaining = response.headers.get("Content-Length")
        total = have + int(remaining) if remaining is not None else None
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                   disable=not progress, leave=False, dynamic_ncols=True)
        received = have
        try:
            with open(part, "ab" if resumed else "wb") as out:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (http.client.HTTPException, OSError) as exc:
            raise DownloadError(f"the download of {url} broke off after {received:,} bytes ({exc}); run the "
                                f"same command again to resume from {part}", resumable=True) from exc
        finally:
            bar.close()
    if total is not None and received != total:
        raise DownloadError(f"the download of {url} stopped at {received:,} of {total:,} bytes; run the same "
                            f"command again to resume from {part}", resumable=True)
    os.replace(part, dest)
    return dest

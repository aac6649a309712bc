"""MD5 checks and atomic downloads of dataset files."""
from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from ..errors import DataError
from ..runtime.atomic import atomic_write

_CHUNK = 1 << 20


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_md5(path: Path, actual: str, expected: str, how_to_fix: str) -> None:
    """Raise :class:`DataError` when ``actual`` differs from the published ``expected`` md5."""
    if actual != expected:
        raise DataError(
            f"{path}: md5 {actual} differs from the published {expected}; the file is corrupt, truncated "
            f"or another version. {how_to_fix} To use a file you changed on purpose, set "
            "data.options.verify_checksum=false."
        )


def download(url: str, dest: Path, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` atomically: write a temporary file next to it, check ``md5``, rename.

    On any failure nothing is left at ``dest`` and a :class:`DataError` says where to put the
    file by hand.
    """
    dest = Path(dest)
    manual = f"Download {url} by hand (browser, curl, wget) and save it as {dest}."
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {dest.parent} to download into ({exc}). {manual}") from exc

    def fetch(out: IO[bytes]) -> None:  # copy and hash in one pass; a wrong md5 raises, so nothing is renamed
        digest = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        if md5 is not None:
            actual = digest.hexdigest()
            if actual != md5:
                raise DataError(f"the download of {url} has md5 {actual}, not the published {md5} "
                                f"(interrupted or altered). Try again, or: {manual}")

    try:
        atomic_write(dest, fetch)
    except DataError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataError(f"could not download {url}: {exc}. {manual}") from exc
    return dest

"""Progress for the long downloads of ``bundle`` and ``pin-voices``.

On a terminal (the stream written to, stderr by default, is a tty) a tqdm bar per file: bytes, rate and time
left (bytes and rate only when the source gives no size). Anywhere else no bar and no carriage returns: one
line per file when it completes, ``fetched NAME: 1.2 GiB in 83 s (14.8 MiB/s)``, nothing per chunk.

Errors stay ``OSError`` (an HTTP protocol error or a body shorter than its Content-Length becomes one), so the
callers keep wrapping them with the URL as before.
"""

from __future__ import annotations

import http.client
import os
import sys
import time
import urllib.parse
import urllib.request
from typing import BinaryIO, Callable, TextIO

from tqdm import tqdm

CHUNK = 1 << 20


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units: 512 B, 3.0 MiB, 1.2 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def copy(src: BinaryIO, sink: Callable[[bytes], object], name: str, total: int | None = None,
         stream: TextIO | None = None) -> int:
    """Read ``src`` to its end in chunks, each passed to ``sink``; show the progress of ``name`` on ``stream``
    (stderr by default). ``total``: the expected size in bytes, when known; a shorter body raises ``OSError``.
    Returns the bytes copied."""
    stream = sys.stderr if stream is None else stream
    terminal = is_terminal(stream)
    done = 0
    start = time.monotonic()
    bar = tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, file=stream,
               leave=True, dynamic_ncols=True) if terminal else None
    try:
        for block in iter(lambda: src.read(CHUNK), b""):
            sink(block)
            done += len(block)
            if bar is not None:
                bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()
    if total is not None and done < total:
        raise OSError(f"the body ended after {done} of its {total} bytes")
    if not terminal:
        elapsed = time.monotonic() - start
        rate = f" ({human_bytes(done / elapsed)}/s)" if elapsed > 0 else ""
        print(f"fetched {name}: {human_bytes(done)} in {_seconds(elapsed)}{rate}", file=stream, flush=True)
    return done


def url_name(url: str) -> str:
    """The file name a URL (or path) ends in, without its query: what the progress names."""
    path = urllib.parse.urlsplit(url).path if "://" in url else url
    return urllib.parse.unquote(path.rstrip("/").rsplit("/", 1)[-1]) or url


def fetch(url: str, sink: Callable[[bytes], object], name: str | None = None, stream: TextIO | None = None,
          timeout: float = 60) -> int:
    """``url`` (http(s)://, file:// or a local path) chunk by chunk into ``sink``, with progress (``copy``).
    Raises ``OSError`` (urllib's ``URLError``/``HTTPError`` among them) on failure."""
    name = name or url_name(url)
    if "://" not in url:
        with open(url, "rb") as fh:
            return copy(fh, sink, name, os.fstat(fh.fileno()).st_size, stream)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
            return copy(resp, sink, name, total, stream)
    except http.client.HTTPException as exc:  # IncompleteRead and the like: not OSErrors
        raise OSError(f"{type(exc).__name__}: {exc}") from exc

"""piper-gpu-server: Piper voices over HTTP, on the GPU when there is one.

Modules by concern: ``config`` (settings from a TOML file and flags), ``text`` (splitting texts into
bounded pieces), ``gpu`` (driver probe, NVML), ``voices`` (ONNX sessions and synthesis), ``metrics``
(Prometheus), ``app`` (the HTTP contract, an ASGI application), ``serve`` (Hypercorn, signals)."""

from __future__ import annotations


def installed(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(dist)
    except PackageNotFoundError:
        return None


def version() -> str:
    """This server's installed version (the deploy builds 0.2.0+src.<hash>)."""
    return installed("piper-gpu-server") or "0+unknown"

"""The server's tests run its voices on the CPU and say so (X-Provider, /health, the bounds measured on
the CPU): the test venv holds the CPU onnxruntime that piper-tts brings. Where someone has put
onnxruntime-gpu with a working CUDA provider into it, the voices would run on the GPU and those
assertions be wrong, not the server: the tests skip, naming why. (A GPU in the machine does not matter:
with the CPU onnxruntime every voice still runs on the CPU; the tests compare GPU names with the
machine's own.)

Under CI (``CI=true`` in the environment, as CI services set it) the suite fails instead of skipping: a lock
or a bootstrap that put the CUDA provider into the test venv would otherwise turn every server test into a
skip and leave the run green."""

import os

import pytest


def _cuda_in_the_test_venv() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


WHY = ("the test venv's onnxruntime has the CUDA provider (onnxruntime-gpu): these tests assert voices on the "
       "CPU; run them in a venv with the CPU onnxruntime (scripts/bootstrap)")


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def pytest_collection_modifyitems(config, items):
    if under_ci() or not _cuda_in_the_test_venv():
        return
    skip = pytest.mark.skip(reason=WHY)
    for item in items:
        if "tests/server/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)


def pytest_runtest_setup(item):
    """Under CI, each server test fails where it would have skipped."""
    if under_ci() and _cuda_in_the_test_venv():
        pytest.fail(f"CI=true: {WHY}", pytrace=False)

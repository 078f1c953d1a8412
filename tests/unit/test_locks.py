"""Each venv lock against PyPI: every pin has a manylinux x86_64 wheel for its Python whose
Requires-Python admits it (pip download --only-binary=:all: --python-version X --no-deps). Wheels
land in the lab's download cache, so a second run downloads nothing."""

import pytest

from piper_gpu import locks, platforms
from tests.lab.mirror import CACHE, _py_subdir
from piper_gpu.settings import from_fields

VOICES = [{"name": "zh_CN-huayan-medium", "onnx_sha256": "a" * 64, "json_sha256": "a" * 64}]


def _requirements(python: str) -> dict[str, str]:
    p = next(p for p in platforms.PLATFORMS if p.python == python)
    return from_fields({"voices": VOICES}).for_host(p, python).python_requirements()


@pytest.mark.parametrize("python", locks.available())
def test_every_pin_has_a_wheel_for_its_python(python):
    pins = _requirements(python)
    assert not locks.check(python, pins, CACHE / _py_subdir(python))


def test_a_wrong_pin_for_one_python_fails_the_check():
    pins = {**_requirements("3.10"), "numpy": "2.4.6"}  # numpy 2.4 requires Python >= 3.11
    failures = locks.check("3.10", pins, CACHE / _py_subdir("3.10"))
    assert list(failures) == ["numpy==2.4.6"], failures


def test_the_lock_command_prints_one_pin_per_line(capsys):
    from piper_gpu.__main__ import main

    assert main(["lock", "--python", "3.10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "onnxruntime-gpu==1.20.2" in lines and "piper-tts==1.8.0" in lines and "numpy==2.2.6" in lines
    assert all("==" in line for line in lines) and not any(line.startswith("onnxruntime==") for line in lines)


def test_the_lock_command_refuses_a_python_without_a_lock(capsys):
    from piper_gpu.__main__ import main

    assert main(["lock", "--python", "3.9"]) == 1
    assert "no venv lock for Python 3.9 (locks: 3.10, 3.11, 3.12)" in capsys.readouterr().err

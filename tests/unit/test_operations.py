"""What the venv operation will do, as --dry names it."""

from piper_gpu.operations import venv_changes

LOCK = {"piper-tts": "1.8.0", "onnxruntime-gpu": "1.20.2", "numpy": "2.2.6"}


def test_an_unchanged_venv_needs_nothing():
    assert not venv_changes({"piper-tts": "1.8.0", "onnxruntime-gpu": "1.20.2", "numpy": "2.2.6", "pip": "24"}, LOCK)


def test_a_changed_pin_names_old_and_new_versions():
    changes = venv_changes({"piper-tts": "1.8.0", "onnxruntime-gpu": "1.20.1", "numpy": "2.2.6"}, LOCK)
    assert changes.describe() == "install onnxruntime-gpu==1.20.2 (was 1.20.1)"


def test_the_cpu_build_goes_and_the_gpu_build_is_reinstalled_over_it():
    changes = venv_changes({"piper-tts": "1.8.0", "onnxruntime-gpu": "1.20.2", "onnxruntime": "1.20.1",
                            "numpy": "2.2.6", "nvidia-cublas-cu12": "12.4.5.8"}, LOCK)
    assert changes.force
    assert changes.describe() == ("install onnxruntime-gpu==1.20.2 (was 1.20.2); "
                                  "remove nvidia-cublas-cu12, onnxruntime")


def test_an_empty_venv_gets_the_whole_lock():
    assert venv_changes(None, LOCK).describe() == "install numpy==2.2.6, onnxruntime-gpu==1.20.2, piper-tts==1.8.0"

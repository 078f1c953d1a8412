"""What the venv operation will do, as --dry names it."""

from piper_gpu.operations import venv_changes

LOCK = {"piper-tts": "1.8.0", "onnxruntime-gpu": "1.20.2", "numpy": "2.2.6"}


def state(distributions, broken=None):
    """A ``VenvState`` reading."""
    return {"site": "/v/site-packages", "distributions": distributions, "broken": broken or {}, "debris": [],
            "foreign_owned": [], "foreign_owned_count": 0}


def test_an_unchanged_venv_needs_nothing():
    assert not venv_changes(state({"piper-tts": "1.8.0", "onnxruntime-gpu": "1.20.2", "numpy": "2.2.6", "pip": "24"}), LOCK)


def test_a_changed_pin_names_old_and_new_versions():
    changes = venv_changes(state({"piper-tts": "1.8.0", "onnxruntime-gpu": "1.20.1", "numpy": "2.2.6"}), LOCK)
    assert changes.describe() == "install onnxruntime-gpu==1.20.2 (was 1.20.1)"


def test_the_cpu_build_goes_and_the_gpu_build_is_reinstalled_over_it():
    changes = venv_changes(state({"piper-tts": "1.8.0", "onnxruntime-gpu": "1.20.2", "onnxruntime": "1.20.1",
                                  "numpy": "2.2.6", "nvidia-cublas-cu12": "12.4.5.8"}), LOCK)
    assert changes.force
    assert changes.describe() == ("install onnxruntime-gpu==1.20.2 (reinstalled); "
                                  "remove nvidia-cublas-cu12, onnxruntime")


def test_an_empty_venv_gets_the_whole_lock():
    assert venv_changes(None, LOCK).describe() == "install numpy==2.2.6, onnxruntime-gpu==1.20.2, piper-tts==1.8.0"


def test_a_pinned_distribution_with_missing_files_is_force_reinstalled():
    """The CPU onnxruntime installed over the GPU build, then uninstalled: onnxruntime-gpu is still
    listed at its pinned version, but the files they shared are gone."""
    changes = venv_changes(state({"piper-tts": "1.8.0", "onnxruntime-gpu": "1.20.2", "numpy": "2.2.6"},
                                 broken={"onnxruntime-gpu": "12 file(s) missing or changed, e.g. onnxruntime/__init__.py"}),
                           LOCK)
    assert changes.force and changes.install == {"onnxruntime-gpu": ("1.20.2", "1.20.2")}
    assert changes.describe() == "install onnxruntime-gpu==1.20.2 (files missing or changed)"


def test_a_broken_distribution_outside_the_lock_is_not_reinstalled():
    changes = venv_changes(state({**LOCK, "pip": "24"}, broken={"pip": "1 file(s) missing"}), LOCK)
    assert not changes

"""Fact parsers, fed the output their commands print."""

import subprocess

from pyinfra.facts.deb import DebPackages

from piper_gpu.facts import DpkgInterrupted, NvidiaDriver, PythonVersion, WslInfo


def test_pyinfras_installed_packages_include_held_ones():
    """The deploy decides on pyinfra's own deb.DebPackages (dpkg -l): held packages (a held cuDNN, a
    held Linux driver on WSL2) must count as installed, removed ones must not."""
    out = ["ii  curl           7.88.1-10    amd64  command line tool",
           "hi  libcudnn9-cuda-12 9.1.1.17-1 amd64  cuDNN runtime libraries",
           "ii  libnvidia-compute-550:amd64 550.120-0ubuntu0.22.04.1 amd64 NVIDIA libcompute package",
           "rc  oldpkg 1.0 amd64 gone", "iU  half 2.0 amd64 unpacked"]
    assert DebPackages().process(out) == {"curl": {"7.88.1-10"}, "libcudnn9-cuda-12": {"9.1.1.17-1"},
                                          "libnvidia-compute-550": {"550.120-0ubuntu0.22.04.1"}}


def test_nvidia_smi_parsing():
    out = ["path=/usr/lib/wsl/lib/nvidia-smi", "cuda=12.6", "gpu=NVIDIA GeForce RTX 4090, 560.94"]
    assert NvidiaDriver().process(out) == {"path": "/usr/lib/wsl/lib/nvidia-smi", "driver_version": "560.94",
                                           "cuda_version": "12.6", "gpus": ["NVIDIA GeForce RTX 4090"]}
    assert NvidiaDriver().process(["none"]) is None
    failed = NvidiaDriver().process(["path=/usr/bin/nvidia-smi", "gpu=NVIDIA-SMI has failed because it couldn't communicate"])
    assert failed["gpus"] == []


def test_wsl_detection():
    assert WslInfo().process(["kernel=5.15.153.1-microsoft-standard-WSL2", "wsl_lib=yes"])["is_wsl"] is True
    assert WslInfo().process(["kernel=6.1.0-26-amd64", "wsl_lib=no"]) == {"kernel": "6.1.0-26-amd64", "wsl_lib": False,
                                                                         "is_wsl": False}


def test_interrupted_dpkg_list():
    assert DpkgInterrupted().process(["libcurand-12-4", ""]) == ["libcurand-12-4"]


def test_python_version_from_python3_or_apts_candidate():
    out = subprocess.run(["sh", "-c", PythonVersion().command()], capture_output=True, text=True).stdout.splitlines()
    assert PythonVersion().process(out) == subprocess.run(
        ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True).stdout.strip()
    assert PythonVersion().process(["3.12"]) == "3.12"
    assert PythonVersion().process([]) is None


def test_apts_own_simulation_names_the_dependency_that_cannot_be_installed(tmp_path):
    """AptSimulation's command, run by the real apt of this machine against a repository whose toolkit
    needs a package no source has (as CUDA 12.4's profilers need libtinfo5, which Ubuntu 24.04 dropped),
    and parsed: apt's exit code and its reason, with the package it belongs to."""
    import shutil

    import pytest

    from piper_gpu.facts import AptSimulation, apt_reasons

    if not shutil.which("apt-get"):
        pytest.skip("no apt-get on this machine")
    repo, state, cache = tmp_path / "repo", tmp_path / "state", tmp_path / "cache"
    for d in (repo, state / "lists" / "partial", cache / "archives" / "partial"):
        d.mkdir(parents=True)
    (repo / "Packages").write_text(
        "Package: cuda-toolkit-12-4\nVersion: 12.4.1-1\nArchitecture: all\nDepends: cuda-nsight-systems-12-4\n"
        "Filename: ./t.deb\nSize: 1\nDescription: toolkit\n\n"
        "Package: cuda-nsight-systems-12-4\nVersion: 12.4.1-1\nArchitecture: all\nDepends: libtinfo5\n"
        "Filename: ./n.deb\nSize: 1\nDescription: profiler\n\n"
        "Package: cuda-cudart-12-4\nVersion: 12.4.127-1\nArchitecture: all\nFilename: ./c.deb\nSize: 1\n"
        "Description: runtime\n")
    (tmp_path / "sources.list").write_text(f"deb [trusted=yes] file:{repo} ./\n")
    conf = tmp_path / "apt.conf"
    conf.write_text(f'Dir::State "{state}"; Dir::State::status "/dev/null"; Dir::Cache "{cache}"; '
                    f'Dir::Etc::sourcelist "{tmp_path / "sources.list"}"; Dir::Etc::sourceparts "-"; '
                    'Debug::NoLocking "1";\n')
    env = {"APT_CONFIG": str(conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)

    def simulate(packages):
        out = subprocess.run(["sh", "-c", AptSimulation().command(packages)], env=env, capture_output=True, text=True)
        return AptSimulation().process(out.stdout.splitlines())

    rc, lines = simulate({"cuda-toolkit-12-4": None})
    assert rc == 100, lines
    assert apt_reasons(lines) == ["cuda-nsight-systems-12-4 Depends: libtinfo5 but it is not installable",
                                  "E: Unable to correct problems, you have held broken packages."]
    assert simulate({"cuda-cudart-12-4": "12.4.127-1"})[0] == 0  # the runtime alone installs

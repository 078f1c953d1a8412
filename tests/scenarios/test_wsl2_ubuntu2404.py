"""A new WSL2 machine: Ubuntu 24.04 (a real noble userland from Ubuntu's archive, Python 3.12, apt
sources in deb822 form), presented as WSL2, with NVIDIA's wsl-ubuntu repository as the lab models it
(CUDA 12.4 built before 24.04: its profilers need libtinfo5, which 24.04 no longer ships). The
platform table's defaults converge (nvcc and the libraries without the profilers, cuDNN from the
archive), a second run changes nothing, verify passes with the GPU checks skipped and their reason;
the whole toolkit stops at apt's own simulation with apt's reason and the setting that fixes it."""

import json
import re

import pytest

from conftest import Lab, record
from piper_gpu import locks
from tests.lab.personas import WSL_USER

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("wsl2-ubuntu2404")]
VENV = f"/home/{WSL_USER}/piper_env/.venv"


@pytest.fixture(scope="module")
def noble():
    lab = Lab("e2e-wsl2-2404", 15014, persona="wsl2-ubuntu2404")
    yield lab
    lab.box.destroy()


def installed(lab) -> dict[str, str]:
    out = lab.sh("dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\\n'").stdout
    return {p: v for p, v, st in (line.split(" ", 2) for line in out.splitlines()) if st.startswith("ii")}


def test_the_host_is_wsl2_ubuntu_2404_with_its_own_sources(noble):
    assert 'VERSION_ID="24.04"' in noble.sh("cat /etc/os-release").stdout
    assert "microsoft-standard-WSL2" in noble.sh("cat /proc/sys/kernel/osrelease").stdout
    assert "Candidate: 3.12." in noble.sh("apt-get update -qq && apt-cache policy python3").stdout  # none installed yet
    sources = noble.sh("cat /etc/apt/sources.list.d/ubuntu.sources").stdout
    assert "Suites: noble noble-updates noble-security" in sources and "Signed-By:" in sources
    assert not re.search(r"^deb ", noble.sh("cat /etc/apt/sources.list").stdout, re.M)


def test_the_whole_toolkit_stops_at_apts_simulation_before_any_cuda_package(noble):
    """cuda_install='toolkit' on 24.04: every package is offered, but apt cannot install Nsight Systems
    (libtinfo5 is not in noble). The deploy stops with apt's reason and the setting that fixes it."""
    run = noble.deploy_with(cuda_install="toolkit")
    assert run.returncode != 0
    out = run.output
    assert "apt-get install --simulate of what this deploy pins fails" in out, out[-4000:]
    assert re.search(r"nsight-systems-2023\.4\.4 Depends: libtinfo5 but it is not installable", out), out[-4000:]
    assert "cuda_install='compiler'" in out and "nothing was installed" in out
    assert not [p for p in installed(noble) if p.startswith(("cuda-", "libcudnn", "libcublas", "nsight"))
                and p != "cuda-keyring"], installed(noble)
    policy = noble.sh("apt-cache policy libtinfo5").stdout  # nowhere to be had on 24.04
    assert "Candidate" not in policy or "Candidate: (none)" in policy, policy


def test_converges_with_the_platform_defaults(noble):
    first = noble.deploy()
    assert first.changes and first.changes > 20, first.output[-3000:]
    assert "Install CUDA 12.4 compiler and runtime libraries (no profilers): cuda-compiler-12-4, cuda-libraries-12-4" \
        in first.output
    packages = installed(noble)
    assert packages["cuda-compiler-12-4"] == "12.4.1-1" and packages["cuda-libraries-12-4"] == "12.4.1-1"
    assert not [p for p in packages if p.startswith(("cuda-toolkit", "cuda-tools", "nsight"))], packages
    assert "xz-utils" in packages  # the cuDNN archive is a .tar.xz, and noble's minimal root has no xz
    applied = json.loads(noble.sh("cat /etc/piper-gpu/settings.json").stdout)
    assert applied["cuda_install"] == "compiler" and applied["cudnn_source"] == "archive", applied


def test_second_run_changes_nothing(noble):
    second = noble.deploy()
    assert second.changes == 0, re.findall(r".*\| .*Success.*", second.output)
    first = next(r for r in noble.runs if r.returncode == 0)
    record("wsl2-ubuntu2404", converge={"seconds": round(first.seconds, 1), "changes": first.changes},
           second_run={"seconds": round(second.seconds, 1), "changes": second.changes})


def test_the_venv_runs_python_3_12_with_its_lock(noble):
    assert noble.sh(f"{VENV}/bin/python -c 'import sys; print(sys.version_info[:2])'").stdout.strip() == "(3, 12)"
    dists = {d["name"].lower().replace("_", "-"): d["version"]
             for d in json.loads(noble.sh(f"{VENV}/bin/python -m pip list --format=json").stdout)}
    pinned = locks.load("3.12")
    assert pinned["numpy"] == "2.4.6" != locks.load("3.10")["numpy"]  # the 3.12 lock, not the users' 3.10 one
    assert {name: dists.get(name) for name in pinned} == pinned
    assert "onnxruntime" not in dists and "tomli" not in dists  # tomli: Python < 3.11 only


def test_verify_passes_with_gpu_checks_skipped(noble, tmp_path):
    results = noble.diagnose(tmp_path)
    failed = {k: v for k, v in results.items() if v["outcome"] == "failed"}
    assert not failed, noble.last_screen
    for check in ("wsl2_gpu_library_path", "wsl2_libcuda_is_the_windows_drivers", "toolkit_nvcc_version",
                  "cudnn_version", "cudnn_files_from_their_source", "cudnn_sublibraries_from_one_release",
                  "cuda_provider_library_dependencies_resolve", "tts_returns_a_valid_wav",
                  "venv_holds_every_pinned_distribution"):
        assert results[check]["outcome"] == "passed", (check, noble.last_screen)
    skipped = results["real_session_uses_cuda"]
    assert skipped["outcome"] == "skipped" and "cuInit(0) gives 100" in skipped["reason"], skipped

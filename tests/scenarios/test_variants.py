"""A second host with the other sources: CUDA runtime libraries only (no toolkit), cuDNN from an
operator-supplied .deb unpacked under /opt (the fallback when its dependencies do not fit the
distro), another service user and port."""


import pytest
import requests

from tests.lab.mirror import CACHE, sha256

from conftest import Lab

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("variants")]
DEB = "libcudnn9-cuda-12_9.1.1.17-1_amd64.deb"
EXTRACTED = "/opt/cudnn-9.1.1.17-cuda12/usr/lib/x86_64-linux-gnu"
API_KEY = "variant-api-key-0123456789"


@pytest.fixture(scope="module")
def variant():
    lab = Lab("e2e-variant", 15006, extra=lambda url: {
        "cuda_install": "runtime",
        "cudnn_source": "local-deb",
        "cudnn_deb_url": f"{url}/cuda/repos/debian12/x86_64/{DEB}",
        "cudnn_deb_sha256": sha256(CACHE / "mirror/cuda/repos/debian12/x86_64" / DEB),
        "cudnn_deb_extract": True,
        "service_user": "tts",
        "api_key": API_KEY,
        "max_pending": 2,
    })
    yield lab
    lab.box.destroy()


def test_converges_and_is_idempotent(variant):
    assert variant.deploy().changes > 20
    assert variant.deploy().changes == 0


def test_runtime_only_has_libraries_but_no_toolkit(variant):
    pkgs = variant.sh("dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n'").stdout
    assert "cuda-libraries-12-4 ii" in pkgs and "cuda-toolkit-12-4" not in pkgs and "cuda-nvcc-12-4" not in pkgs
    assert not (variant.root / "usr/local/cuda-12.4/bin/nvcc").exists()


def test_cudnn_comes_from_the_unpacked_deb(variant):
    assert "libcudnn9-cuda-12" not in variant.sh("dpkg-query -W -f='${Package}\\n'").stdout
    cache = variant.sh("ldconfig -p").stdout
    assert f"libcudnn.so.9 (libc6,x86-64) => {EXTRACTED}/libcudnn.so.9" in cache
    assert EXTRACTED in (variant.root / "etc/ld.so.conf.d/piper-gpu-cuda.conf").read_text()


def test_verify_passes_and_skips_nvcc_checks(variant, tmp_path):
    results = variant.diagnose(tmp_path)
    assert not [k for k, v in results.items() if v["outcome"] == "failed"], variant.last_screen
    assert results["toolkit_nvcc_version"]["reason"] == "cuda_install=runtime: no nvcc by design"
    assert results["cudnn_version"]["outcome"] == "passed"
    assert results["cudnn_files_from_their_source"]["outcome"] == "passed", variant.last_screen  # the unpacked .deb
    assert results["tts_requires_the_api_key"]["outcome"] == "passed"
    assert results["metrics_answer"]["outcome"] == "passed"
    assert results["performance_script_runs_and_writes_json"]["outcome"] == "passed"


def test_service_runs_as_its_user(variant):
    pid = (variant.root / "home/tts/piper_env/run/piper-tts.pid").read_text().strip()
    assert variant.sh(f"ps -o user= -p {pid}").stdout.strip() == "tts"
    url = f"http://127.0.0.1:{variant.port}/tts"
    assert requests.post(url, json={"text": "Hello there."}, timeout=60).status_code == 401
    r = requests.post(url, json={"text": "Hello there."}, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert r.status_code == 200 and r.content[:4] == b"RIFF"


def test_api_key_file_is_private_and_not_in_recorded_settings(variant):
    st = (variant.root / "etc/piper-gpu/api-key").stat()
    assert oct(st.st_mode & 0o777) == "0o640" and st.st_uid == 0
    assert variant.sh("stat -c %G /etc/piper-gpu/api-key").stdout.strip() == "tts"
    assert API_KEY not in (variant.root / "etc/piper-gpu/settings.json").read_text()
    config = (variant.root / "etc/piper-gpu/server.toml").read_text()
    assert API_KEY not in config and 'api_key_file = "/etc/piper-gpu/api-key"' in config

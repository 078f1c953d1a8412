"""An offline host: `python -m piper_gpu bundle` collects everything on a connected machine (here
from the test mirror, standing in for NVIDIA, PyPI and Hugging Face); the host has no Debian
source, a dead HTTP proxy and no package index, and is provisioned with bundle_url=file:///...
alone. The mirror's access log proves nothing else was asked for."""

import json
import os
import subprocess
import sys

import pytest

from piper_gpu.settings import data_keys
from tests.lab.mirror import CACHE, source_settings
from tests.lab.sandbox import MIRROR_PORT, provision, stop_mirror
from piper_gpu.steps.base import BASE_PACKAGES

from conftest import REPO, Lab, record

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("bundle")]
BUNDLE = "/srv/piper-bundle"
DEAD = "http://127.0.0.1:9"
OFFLINE_ENV = {"http_proxy": DEAD, "https_proxy": DEAD, "HTTP_PROXY": DEAD, "HTTPS_PROXY": DEAD,
               "PIP_INDEX_URL": f"{DEAD}/simple"}
#: This scenario's own server for the mirror, so that its access log holds this host's requests alone: the
#: suite's other hosts, provisioned side by side (scripts/test's workers), ask the shared one.
BUNDLE_MIRROR_PORT = int(os.environ.get("PIPER_BUNDLE_MIRROR_PORT", str(MIRROR_PORT + 10)))
MIRROR_LOG = CACHE / f"mirror-http-{BUNDLE_MIRROR_PORT}.log"


@pytest.fixture(scope="module")
def offline():
    # apt_cache=False: a cached .deb could hide one missing from the bundle
    lab = Lab("e2e-bundle", 15012, apt_cache=False, mirror_port=BUNDLE_MIRROR_PORT)
    data = json.loads(lab.box.data_file.read_text())
    # The connected machine: the operator's settings, with the upstream sources (the test mirror).
    upstream = {**data, **source_settings(lab.mirror_url)}
    settings_file = lab.box.dir / "operator-settings.json"
    settings_file.write_text(json.dumps(data_keys(upstream)))  # as in group data
    lab.bundle = subprocess.run(
        [sys.executable, "-m", "piper_gpu", "bundle", str(lab.root / BUNDLE.lstrip("/")), "--settings",
         str(settings_file), "--repo-path", "debian12", "--python", "3.11"],
        cwd=REPO, capture_output=True, text=True)
    assert lab.bundle.returncode == 0, lab.bundle.stderr
    # The distro's own packages come from the distro (installed while it still had its mirror): the
    # base packages and what NVIDIA's packages depend on that NVIDIA's repository does not carry
    # (libtinfo5, for Nsight Systems), which the bundle names...
    from_the_distro = json.loads((lab.root / BUNDLE.lstrip("/") / "bundle.json").read_text())[
        "cuda_repository"]["from_the_distro"]
    assert "libtinfo5" in from_the_distro, from_the_distro
    lab.sh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
           + " ".join(BASE_PACKAGES + from_the_distro) + " >/dev/null")
    # ...then every route is cut: no Debian source, no apt lists, a dead proxy, no pip index.
    lab.sh("mv /etc/apt/sources.list /etc/apt/sources.list.offline && rm -rf /var/lib/apt/lists/*")
    lab.box.data_file.write_text(json.dumps({**data, "bundle_url": f"file://{BUNDLE}"}, indent=2))
    yield lab
    lab.box.destroy()
    stop_mirror(BUNDLE_MIRROR_PORT)


def deploy_offline(lab):
    asked_before = MIRROR_LOG.read_text().count("\n")
    result = provision(lab.box, DEAD, echo=False, env_extra=OFFLINE_ENV)
    assert result.returncode == 0, result.output[-6000:]
    assert MIRROR_LOG.read_text().count("\n") == asked_before, "the deploy reached the mirror"
    return result


def test_the_bundle_holds_exactly_what_the_settings_need(offline):
    bundle = offline.root / BUNDLE.lstrip("/")
    manifest = json.loads((bundle / "bundle.json").read_text())
    repo = bundle / "cuda/repos/debian12/x86_64"
    debs = sorted(p.name for p in repo.glob("*.deb"))
    assert "libcudnn9-cuda-12_9.1.1.17-1_amd64.deb" in debs and "cuda-keyring_1.1-1_all.deb" in debs
    assert "libcudnn9-cuda-12_9.1.0.70-1_amd64.deb" not in debs  # in the repository, not pinned
    assert len(debs) == len(manifest["cuda_repository"]["packages"]) + 1
    for name in ("InRelease", "Packages"):  # NVIDIA's signed index, verbatim
        assert (repo / name).read_bytes() == (CACHE / "mirror/cuda/repos/debian12/x86_64" / name).read_bytes()
    assert offline.sh(f"cd {BUNDLE} && sha256sum --quiet -c SHA256SUMS").returncode == 0
    assert "cuda-toolkit-12-4=12.4.1-1" in offline.bundle.stdout


def test_an_offline_host_converges_from_the_bundle_alone(offline):
    first = deploy_offline(offline)
    assert first.changes > 20
    assert f"file://{BUNDLE}/cuda/repos/debian12/x86_64/" in (
        offline.root / "etc/apt/sources.list.d/cuda-debian12-x86_64.list").read_text()
    again = deploy_offline(offline)
    assert again.changes == 0
    record("offline-bundle", converge_seconds=round(first.seconds, 1), rerun_seconds=round(again.seconds, 1),
           bundle_files=len(json.loads((offline.root / BUNDLE.lstrip("/") / "bundle.json").read_text())["files"]))


def test_verify_passes_on_the_offline_host(offline, tmp_path):
    results = offline.diagnose(tmp_path)
    assert not [k for k, v in results.items() if v["outcome"] == "failed"], offline.last_screen
    assert results["tts_returns_a_valid_wav"]["outcome"] == "passed"

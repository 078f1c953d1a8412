"""Upgrade and rollback on a real sandbox host, from a mirror that carries two releases of
cuDNN (9.1.0.70 / 9.1.1.17, apt, held), piper-tts (1.3.0 / 1.8.0, venv) and the test voice
(revision 1 / revision 2, whose config speaks 30% slower): changing the pins and re-running
converges to exactly the new state, restarts the service once, and setting them back returns."""

import hashlib
import json

import pytest
import requests

from tests.lab import mirror

from conftest import Lab, record

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("upgrade")]
TEXT = "The quick brown fox jumps over the lazy dog while the band plays on."
CUDNN_LIBS = "/usr/lib/x86_64-linux-gnu"


@pytest.fixture(scope="module")
def lab():
    lab = Lab("e2e-upgrade", 15010)
    m = mirror.load()
    base = json.loads(lab.box.data_file.read_text())
    lab.releases = {
        "previous": {**base, **m.previous},
        "current": {**base, "voices": [{**m.voice_r2, "url": f"{lab.mirror_url}/{m.voice_r2['url']}"}]},
    }
    lab.voice_sha = {"previous": base["voices"][0], "current": m.voice_r2}
    lab.seen = {}
    yield lab
    lab.box.destroy()


def use(lab, release: str):
    lab.box.data_file.write_text(json.dumps(lab.releases[release], indent=2))


def state(lab) -> dict:
    target = json.loads((lab.root / "etc/piper-gpu/target.json").read_text())
    venv = lab.sh(f"{target['venv_dir']}/bin/python -m pip list --format json --disable-pip-version-check").stdout
    dists = {d["name"].lower(): d["version"] for d in json.loads(venv)}
    site = lab.sh(f"ls -d {target['venv_dir']}/lib/python3*/site-packages").stdout.strip()
    voice_dir = lab.root / target["voice_files"]["en_US-joe-medium"].lstrip("/")
    log = (lab.root / target["log_path"].lstrip("/")).read_text()
    wav = requests.post(f"http://127.0.0.1:{lab.port}/tts", json={"text": TEXT}, timeout=120)
    assert wav.status_code == 200, wav.text
    return {
        "cudnn": lab.sh("dpkg-query -W -f='${Version} ${db:Status-Abbrev}' libcudnn9-cuda-12").stdout.strip(),
        "held": lab.sh("apt-mark showhold").stdout.split(),
        "cudnn_files": sorted(lab.sh(f"cd {CUDNN_LIBS} && ls libcudnn.so.9*").stdout.split()),
        "piper_tts": dists.get("piper-tts"),
        "piper_dist_infos": sorted(lab.sh(f"cd {site} && ls -d piper_tts-*.dist-info").stdout.split()),
        "onnxruntime": sorted(d for d in dists if d.startswith("onnxruntime")),
        "voice_sha": [hashlib.sha256(voice_dir.read_bytes()).hexdigest(),
                      hashlib.sha256(voice_dir.with_name(voice_dir.name + ".json").read_bytes()).hexdigest()],
        "starts": log.count(" start: pid="),
        "pid": (lab.root / target["pid_file"].lstrip("/")).read_text().strip(),
        "audio_s": float(wav.headers["X-Audio-Seconds"]),
    }


def expect_release(lab, s: dict, release: str) -> None:
    cudnn, piper = (("9.1.0.70", "1.3.0") if release == "previous" else ("9.1.1.17", "1.8.0"))
    assert s["cudnn"] == f"{cudnn}-1 hi", s  # installed and held at the pinned version
    assert "libcudnn9-cuda-12" in s["held"]
    assert s["cudnn_files"] == ["libcudnn.so.9", f"libcudnn.so.{cudnn[:5]}"], s  # the other release's files gone
    assert s["piper_tts"] == piper and s["piper_dist_infos"] == [f"piper_tts-{piper}.dist-info"], s
    assert s["onnxruntime"] == ["onnxruntime-gpu"], s
    v = lab.voice_sha[release]
    assert s["voice_sha"] == [v["onnx_sha256"], v["json_sha256"]], s


def health(lab) -> dict:
    return requests.get(f"http://127.0.0.1:{lab.port}/health", timeout=10).json()


def move_to(lab, release: str, tmp_path) -> dict:
    """Re-pin, re-run, and check the host converged: new state, one restart, verify green, idempotent."""
    before = lab.seen[max(lab.seen, key=lambda k: lab.seen[k]["starts"])] if lab.seen else None
    use(lab, release)
    run = lab.deploy()
    s = state(lab)
    expect_release(lab, s, release)
    if before is not None:
        assert s["starts"] == before["starts"] + 1, "the service was not restarted exactly once"
        assert s["pid"] != before["pid"]
    h = health(lab)
    assert h["piper_tts"] == s["piper_tts"]
    results = lab.diagnose(tmp_path)
    assert not [k for k, v in results.items() if v["outcome"] == "failed"], lab.last_screen
    assert results["running_service_is_what_was_deployed"]["outcome"] == "passed"
    assert lab.deploy().changes == 0
    lab.seen[release + str(len(lab.seen))] = s
    return {"changes": run.changes, "seconds": round(run.seconds, 1)}


def test_previous_release_converges(lab, tmp_path):
    move_to(lab, "previous", tmp_path)


def test_upgrade_moves_every_pin_and_restarts_once(lab, tmp_path):
    previous = next(iter(lab.seen.values()))
    figures = move_to(lab, "current", tmp_path)
    now = list(lab.seen.values())[-1]
    ratio = now["audio_s"] / previous["audio_s"]
    # the service speaks with revision 2 of the voice: length_scale 1.3 stretches the phonemes, not the
    # whole WAV (measured 1.207 on the project VM); the same revision would give 1.0 +- a few % of sampling noise
    assert 1.1 < ratio < 1.45, ratio
    record("upgrade-rollback", upgrade=figures, audio_ratio_after_upgrade=round(ratio, 3))


def test_rollback_returns_to_the_previous_state(lab, tmp_path):
    first = next(iter(lab.seen.values()))
    figures = move_to(lab, "previous", tmp_path)
    now = list(lab.seen.values())[-1]
    assert {k: v for k, v in now.items() if k not in ("starts", "pid", "audio_s")} == \
        {k: v for k, v in first.items() if k not in ("starts", "pid", "audio_s")}
    assert abs(now["audio_s"] - first["audio_s"]) / first["audio_s"] < 0.08
    record("upgrade-rollback", rollback=figures)


def test_a_missed_restart_is_caught_by_verify(lab, tmp_path):
    """Voice files replaced on disk while the server still runs what it loaded before."""
    target = json.loads((lab.root / "etc/piper-gpu/target.json").read_text())
    config = lab.root / target["voice_files"]["en_US-joe-medium"].lstrip("/")
    config = config.with_name(config.name + ".json")
    deployed = config.read_bytes()
    config.write_bytes(deployed.replace(b'"noise_scale": 0.667', b'"noise_scale": 0.5'))
    lab.sh(f"{target['ctl']} restart >/dev/null")  # the server loads the hand-edited config
    config.write_bytes(deployed)  # the deployed file is back; the server still runs the edited one
    result = lab.diagnose(tmp_path)["running_service_is_what_was_deployed"]
    assert result["outcome"] == "failed"
    assert result["fix"].startswith(f"sudo {target['ctl']} restart"), result
    lab.sh(f"{target['ctl']} restart >/dev/null")
    assert lab.diagnose(tmp_path)["running_service_is_what_was_deployed"]["outcome"] == "passed"

"""Plan step 8: the service runs, listens, reports its provider and answers POST /tts with a WAV."""

import json
import shlex

import pytest

import checks
from conftest import expect, health, report

@pytest.fixture(scope="module")
def texts(host, target) -> dict:
    """The test texts the deploy installed with the performance tool."""
    f = host.file(target["texts_file"])
    expect(f.exists, f"no {target['texts_file']}", "the test texts the deploy installs", "re-run the deploy")
    return json.loads(f.content_string)

REQUEST = """
import io, json, time, urllib.request, urllib.error, wave
headers = {{"Content-Type": "application/json"}}
if {key_file!r}:
    headers["Authorization"] = "Bearer " + open({key_file!r}).read().strip()
req = urllib.request.Request({url!r}, data=json.dumps({body!r}).encode(), headers=headers)
out = {{}}
t = time.perf_counter()
try:
    with urllib.request.urlopen(req, timeout=300) as r:
        data = r.read(); out["status"] = r.status; out["provider"] = r.headers.get("X-Provider")
        w = wave.open(io.BytesIO(data))
        out.update(channels=w.getnchannels(), rate=w.getframerate(), width=w.getsampwidth(), seconds=w.getnframes() / w.getframerate())
except urllib.error.HTTPError as e:
    out["status"] = e.code; out["body"] = e.read().decode(errors="replace")
except Exception as e:
    out["error"] = repr(e)
out["ms"] = (time.perf_counter() - t) * 1000
print(json.dumps(out))
"""


def text_for(texts: dict, voice_name: str, size: str = "medium") -> str:
    lang = "zh" if voice_name.startswith("zh") else "en"
    return texts[f"{lang}_{size}"]


def post_tts(service_env, base_url, body, with_key=True):
    key_file = service_env.target.get("api_key_file") if with_key else None
    rc, data, res = service_env.python(REQUEST.format(url=f"{base_url}/tts", body=body, key_file=key_file))
    return data or {"error": res.stderr.strip()[-300:]}


def server_pid(host, target):
    if target["service_mode"] == "systemd":
        return host.run(f"systemctl show -p MainPID --value {target['unit']}").stdout.strip()
    f = host.file(target["pid_file"])
    return f.content_string.strip() if f.exists else ""


def test_service_running(host, target):
    if target["service_mode"] == "systemd":
        svc = host.service(target["unit"])
        report(checks.systemd_service_running_problem(target["unit"], svc.is_running, svc.is_enabled))
    else:
        status = host.run(f"{target['ctl']} status")
        autostart = host.file(checks.AUTOSTART)
        report(checks.profile_service_running_problem(target["ctl"], status.rc, status.stdout, status.stderr,
                                                      autostart.content_string if autostart.exists else None))


def test_service_listens(host, applied, target):
    """What testinfra's host.socket(...).is_listening runs and decides (`ss` lists a listening socket on the
    bound address, or on every address, [::], and the port), and that the socket is the service's own:
    its process is the pid file's (or the unit's MainPID), not an old server's or another host's."""
    addr = applied.bind_address if applied.bind_address not in ("", "0.0.0.0") else "0.0.0.0"
    try:
        command = host.find_command("ss")
    except ValueError:
        command = "ss"  # not found: the check names the failure
    ss = host.run(f"{command} --numeric --listening --tcp --processes")
    source = f"MainPID of {target['unit']}" if target["service_mode"] == "systemd" else f"pid file {target['pid_file']}"
    report(checks.service_listens_problem(ss.rc, ss.stdout, ss.stderr, addr, applied.port, server_pid(host, target),
                                          source))


def test_health_names_a_provider_per_voice(service_env, base_url, applied):
    report(checks.health_names_a_provider_problem(health(service_env, base_url), f"{base_url}/health",
                                                  [v.name for v in applied.voices]))


def test_running_service_is_what_was_deployed(service_env, base_url, applied, target):
    """After an upgrade or rollback the service must run the new code and voices, not the ones it
    loaded before (a missed restart)."""
    restart = (f"sudo systemctl restart {target['unit']}" if target["service_mode"] == "systemd"
               else f"sudo {target['ctl']} restart")
    wanted = {"onnxruntime": applied.onnxruntime_gpu_version, "piper-tts": applied.piper_tts_version,
              "piper-gpu-server": target.get("server_version")}
    report(checks.running_service_problem(health(service_env, base_url), wanted, applied.voices, restart))


def test_health_reports_cuda(needs_gpu, service_env, base_url, applied):
    report(checks.health_cuda_problem(health(service_env, base_url), [v.name for v in applied.voices]))


def test_tts_returns_a_valid_wav(service_env, base_url, applied, texts):
    for voice in applied.voices:
        text = text_for(texts, voice.name)
        answer = post_tts(service_env, base_url, {"text": text, "voice": voice.name})
        report(checks.tts_wav_problem(voice.name, text, answer))


def test_tts_requires_the_api_key(service_env, base_url, applied, target):
    if not target.get("api_key_file"):
        pytest.skip("no api_key set: POST /tts is open (bound to " + applied.bind_address + ")")
    answer = post_tts(service_env, base_url, {"text": "hello"}, with_key=False)
    report(checks.tts_requires_the_api_key_problem(answer, target["api_key_file"]))


def test_metrics_answer(service_env, base_url, applied):
    code = f"import urllib.request; print(urllib.request.urlopen({base_url + '/metrics'!r}, timeout=10).read().decode())"
    res = service_env.run(f"{service_env.target['venv_dir']}/bin/python -c {shlex.quote(code)}")
    report(checks.metrics_problem(res.stdout, res.stderr, [v.name for v in applied.voices]))


#: Requests to the service while nvidia-smi samples the GPU (per process: `pmon` SM utilisation and
#: compute-apps memory; the whole GPU for WSL2, whose driver lists no processes), until three samples
#: are taken; each request's status and X-Provider header are read (the first one must say CUDA).
SAMPLER = """
import json, subprocess, threading, urllib.request, urllib.error
smi = {smi!r}
def run(*args):
    try:
        return subprocess.run([smi, *args], capture_output=True, text=True, timeout=30).stdout
    except Exception as e:
        return "error: " + repr(e)
APPS = ("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
GPU = ("--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits")
headers = {{"Content-Type": "application/json"}}
if {key_file!r}:
    headers["Authorization"] = "Bearer " + open({key_file!r}).read().strip()
out = {{"before_apps": run(*APPS), "before_gpu": run(*GPU), "samples": [], "answers": []}}
done = threading.Event()
def requests():
    for _ in range(20):
        req = urllib.request.Request({url!r}, data=json.dumps({body!r}).encode(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                r.read(); out["answers"].append({{"status": r.status, "provider": r.headers.get("X-Provider")}})
        except urllib.error.HTTPError as e:
            out["answers"].append({{"status": e.code, "body": e.read().decode(errors="replace")[:200]}})
        except Exception as e:
            out["answers"].append({{"error": repr(e)}})
        if done.is_set() or "status" not in out["answers"][-1]:
            break
worker = threading.Thread(target=requests)
worker.start()
while worker.is_alive():
    out["samples"].append({{"pmon": run("pmon", "-c", "1", "-s", "um"), "apps": run(*APPS), "gpu": run(*GPU)}})
    if len(out["samples"]) >= 3:
        done.set()
worker.join()
print(json.dumps(out))
"""


def test_server_uses_the_gpu_during_a_request(needs_gpu, host, service_env, base_url, applied, target, texts):
    """Per request: the answer's own X-Provider says CUDA, and the server's process gains SM utilisation
    or memory while it answers (its CUDA context alone, held from start-up, proves nothing)."""
    voice = applied.voices[0].name
    body = {"text": text_for(texts, voice, "long"), "voice": voice}
    code = SAMPLER.format(smi=needs_gpu["path"], url=f"{base_url}/tts", body=body,
                          key_file=service_env.target.get("api_key_file"))
    rc, sampled, res = service_env.python(code)
    expect(rc == 0 and isinstance(sampled, dict), f"the sampler fails: {res.stderr.strip()[-300:]}",
           "requests answered while nvidia-smi samples the GPU", "see the error; start the service")
    report(checks.gpu_use_problem(server_pid(host, target), sampled, target["is_wsl"]))


# --- the systemd unit's sandbox (service_mode systemd) ------------------------------------------

#: The unit's sandboxing the deploy writes, as `systemctl show` reports it.
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "read-only", "PrivateTmp": "yes",
             "PrivateDevices": "no", "DevicePolicy": "closed", "RestrictSUIDSGID": "yes", "CapabilityBoundingSet": ""}
#: Device access CUDA needs (NVIDIA's character devices by their /proc/devices names; WSL2's /dev/dxg).
GPU_DEVICES = {"char-nvidiactl rw", "char-nvidia-frontend rw", "char-nvidia-uvm rw", "/dev/dxg rw"}
#: The ceiling for `systemd-analyze security`'s overall exposure (docs/operating.md, "Hardening": 1.6 measured).
MAX_EXPOSURE = 2.0


@pytest.fixture(scope="module")
def unit(host, target):
    if target["service_mode"] != "systemd":
        pytest.skip(f"service_mode {target['service_mode']}: no systemd unit")
    return target["unit"]


def show(host, unit: str, *props: str) -> str:
    """`systemctl show UNIT -p PROP...` as the host prints it (checks.parse_systemctl_show reads it)."""
    return host.run(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout


def main_pid(host, unit: str) -> str:
    return checks.parse_systemctl_show(show(host, unit, "MainPID")).get("MainPID", "0")


def test_unit_sandbox_is_in_force(host, unit):
    report(checks.unit_sandbox_problem(show(host, unit, *HARDENING), unit, HARDENING))


def test_unit_keeps_gpu_device_access(host, unit):
    report(checks.unit_gpu_devices_problem(show(host, unit, "DeviceAllow"), unit, GPU_DEVICES))


def test_service_runs_as_its_user(host, unit, applied):
    shown = show(host, unit, "MainPID")
    pid = checks.parse_systemctl_show(shown).get("MainPID", "0")
    user = host.run(f"ps -o user= -p {pid}").stdout
    report(checks.service_user_problem(shown, user, unit, applied.service_user))


def test_service_can_write_only_its_log_and_state(host, unit, applied, target):
    """Tried as the service: its user, inside its mount namespace (what ProtectSystem/ProtectHome made of it)."""
    pid = main_pid(host, unit)
    ids = host.run(f"id -u {applied.service_user}; id -g {applied.service_user}").stdout.split()
    wanted = {"/etc": False, "/usr": False, "/usr/local": False, "/var/lib/piper-gpu": False, target["home"]: False,
              target["piper_dir"]: False, target["venv_dir"]: False, "/var/lib/piper-tts": True,
              target["log_path"].rsplit("/", 1)[0]: True}
    probe = " ; ".join(f"if touch {shlex.quote(d)}/.piper-write-probe 2>/dev/null; then rm -f {shlex.quote(d)}/.piper-write-probe; "
                       f"echo {shlex.quote(d)}=yes; else echo {shlex.quote(d)}=no; fi" for d in wanted)
    res = host.run(f"nsenter -t {pid} -m -S {ids[0]} -G {ids[1]} -- sh -c {shlex.quote(probe)}")
    report(checks.service_writes_problem(res.rc, res.stdout, res.stderr, wanted, unit))


def test_unit_exposure_is_low(host, unit):
    res = host.run(f"systemd-analyze security {unit} --no-pager")
    report(checks.unit_exposure_problem(res.stdout, res.stderr, unit, MAX_EXPOSURE))

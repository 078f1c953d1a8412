"""Plan step 8: the service runs, listens, reports its provider and answers POST /tts with a WAV."""

import json
import re
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
        expect(svc.is_running and svc.is_enabled, f"{target['unit']}: running={svc.is_running} enabled={svc.is_enabled}",
               "enabled and running", f"sudo systemctl enable --now {target['unit']}; journalctl -u {target['unit']}")
    else:
        status = host.run(f"{target['ctl']} status")
        expect(status.rc == 0, status.stdout.strip() or status.stderr.strip(), "piper-tts running (pid file, live process)",
               f"sudo {target['ctl']} start (prints the log tail if it fails); or re-run the deploy")
        autostart = host.file("/etc/profile.d/piper-tts-autostart.sh")
        expect(autostart.exists and target["ctl"] in autostart.content_string,
               "no /etc/profile.d/piper-tts-autostart.sh", "the profile start (how the service is enabled without systemd)",
               "re-run the deploy")


def test_service_listens(host, applied):
    addr = applied.bind_address if applied.bind_address not in ("", "0.0.0.0") else "0.0.0.0"
    sock = host.socket(f"tcp://{addr}:{applied.port}")
    expect(sock.is_listening, f"nothing listens on {addr}:{applied.port}", f"the service on {addr}:{applied.port}",
           "start the service (see test_service_running); check the port is not taken")


def test_health_names_a_provider_per_voice(service_env, base_url, applied):
    h = health(service_env, base_url)
    expect(bool(h) and h.get("status") == "ok", f"GET {base_url}/health: {h}", "status ok", "start the service")
    for voice in applied.voices:
        expect(voice.name in h["voices"] and h["voices"][voice.name]["provider"],
               f"/health voices: {list(h['voices'])}", f"{voice.name} with its provider", "re-run the deploy")


def test_running_service_is_what_was_deployed(service_env, base_url, applied, target):
    """After an upgrade or rollback the service must run the new code and voices, not the ones it
    loaded before (a missed restart)."""
    h = health(service_env, base_url)
    restart = (f"sudo systemctl restart {target['unit']}" if target["service_mode"] == "systemd"
               else f"sudo {target['ctl']} restart")
    running = {"onnxruntime": h.get("onnxruntime"), "piper-tts": h.get("piper_tts"), "piper-gpu-server": h.get("server")}
    wanted = {"onnxruntime": applied.onnxruntime_gpu_version, "piper-tts": applied.piper_tts_version,
              "piper-gpu-server": target.get("server_version")}
    expect(running == wanted, f"the service (started {h.get('started')}) runs {running}", f"{wanted}",
           f"{restart} (or re-run the deploy, which restarts it when its inputs change)")
    for voice in applied.voices:
        loaded = h["voices"].get(voice.name, {})
        have = (loaded.get("onnx_sha256"), loaded.get("json_sha256"))
        expect(have == (voice.onnx_sha256, voice.json_sha256),
               f"voice {voice.name} loaded with sha256 {have[0]} / {have[1]}",
               f"the pinned files {voice.onnx_sha256} / {voice.json_sha256}", restart)


def test_health_reports_cuda(needs_gpu, service_env, base_url, applied):
    report(checks.health_cuda_problem(health(service_env, base_url), [v.name for v in applied.voices]))


def test_tts_returns_a_valid_wav(service_env, base_url, applied, texts):
    for voice in applied.voices:
        text = text_for(texts, voice.name)
        r = post_tts(service_env, base_url, {"text": text, "voice": voice.name})
        expect(r.get("status") == 200 and r.get("channels") == 1 and r.get("width") == 2,
               f"POST /tts ({voice.name}): {r}", "200 with a mono 16-bit WAV", "see the server log; re-run the deploy")
        per_char = r["seconds"] / len(text)
        expect(0.02 <= per_char <= 0.6, f"{r['seconds']:.2f} s of audio for {len(text)} characters",
               "a plausible duration (0.02-0.6 s per character)", "the voice files may not match the voice: re-run the deploy")


def test_tts_requires_the_api_key(service_env, base_url, applied, target):
    if not target.get("api_key_file"):
        pytest.skip("no api_key set: POST /tts is open (bound to " + applied.bind_address + ")")
    r = post_tts(service_env, base_url, {"text": "hello"}, with_key=False)
    expect(r.get("status") == 401, f"POST /tts without the key: {r.get('status')}", "401",
           "re-run the deploy (the server reads the key from " + target["api_key_file"] + ")")


def test_metrics_answer(service_env, base_url, applied):
    code = f"import urllib.request; print(urllib.request.urlopen({base_url + '/metrics'!r}, timeout=10).read().decode())"
    res = service_env.run(f"{service_env.target['venv_dir']}/bin/python -c {shlex.quote(code)}")
    providers = [line for line in res.stdout.splitlines() if line.startswith("piper_tts_voice_provider{")]
    for voice in applied.voices:
        # labels in any order (prometheus-client sorts them)
        expect(any(f'voice="{voice.name}"' in line and 'provider="' in line for line in providers),
               f"GET /metrics: {' | '.join(providers) or res.stdout[:200] or res.stderr.strip()[-200:]}",
               f"piper_tts_voice_provider naming {voice.name}'s provider", "re-run the deploy (the server serves /metrics)")
    expect("piper_tts_requests_total" in res.stdout, "no piper_tts_requests_total", "request counters", "re-run the deploy")


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


def show(host, unit: str, *props: str) -> dict:
    out = host.run(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
    values: dict = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        values[key] = value if key not in values else values[key] + "\n" + value
    return values


def test_unit_sandbox_is_in_force(host, unit):
    have = show(host, unit, *HARDENING)
    wrong = {k: have.get(k) for k, v in HARDENING.items() if have.get(k) != v}
    expect(not wrong, f"{unit}: {wrong}", f"{HARDENING}",
           f"re-run the deploy; look for a drop-in that overrides the unit: systemctl cat {unit}")


def test_unit_keeps_gpu_device_access(host, unit):
    allowed = set(show(host, unit, "DeviceAllow").get("DeviceAllow", "").splitlines())
    expect(GPU_DEVICES <= allowed, f"DeviceAllow: {sorted(allowed)}", f"{sorted(GPU_DEVICES)} (and no PrivateDevices)",
           f"re-run the deploy; a drop-in with PrivateDevices=yes or DeviceAllow= hides the GPU: systemctl cat {unit}")


def test_service_runs_as_its_user(host, unit, applied):
    pid = show(host, unit, "MainPID").get("MainPID", "0")
    user = host.run(f"ps -o user= -p {pid}").stdout.strip()
    expect(pid != "0" and user == applied.service_user, f"{unit} main process {pid} runs as {user or 'nobody'}",
           f"user {applied.service_user}", f"re-run the deploy (User= in the unit); systemctl cat {unit}")


def test_service_can_write_only_its_log_and_state(host, unit, applied, target):
    """Tried as the service: its user, inside its mount namespace (what ProtectSystem/ProtectHome made of it)."""
    pid = show(host, unit, "MainPID").get("MainPID", "0")
    ids = host.run(f"id -u {applied.service_user}; id -g {applied.service_user}").stdout.split()
    wanted = {"/etc": False, "/usr": False, "/usr/local": False, "/var/lib/piper-gpu": False, target["home"]: False,
              target["piper_dir"]: False, target["venv_dir"]: False, "/var/lib/piper-tts": True,
              target["log_path"].rsplit("/", 1)[0]: True}
    probe = " ; ".join(f"if touch {shlex.quote(d)}/.piper-write-probe 2>/dev/null; then rm -f {shlex.quote(d)}/.piper-write-probe; "
                       f"echo {shlex.quote(d)}=yes; else echo {shlex.quote(d)}=no; fi" for d in wanted)
    res = host.run(f"nsenter -t {pid} -m -S {ids[0]} -G {ids[1]} -- sh -c {shlex.quote(probe)}")
    have = {line.rsplit("=", 1)[0]: line.rsplit("=", 1)[1] == "yes" for line in res.stdout.splitlines() if "=" in line}
    wrong = {d: ("writable" if have.get(d) else "not writable") for d, w in wanted.items() if have.get(d) != w}
    expect(res.rc == 0 and not wrong, f"as the service: {wrong or res.stderr.strip()}",
           "writes only to its log directory and /var/lib/piper-tts",
           f"re-run the deploy (ProtectSystem=strict, ProtectHome=read-only, ReadWritePaths= in {unit}); systemctl cat {unit}")


def test_unit_exposure_is_low(host, unit):
    res = host.run(f"systemd-analyze security {unit} --no-pager")
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    expect(bool(m) and float(m.group(1)) <= MAX_EXPOSURE, (res.stdout.strip().splitlines() or [res.stderr.strip()])[-1],
           f"an exposure of at most {MAX_EXPOSURE}", f"re-run the deploy; compare `systemctl cat {unit}` with the table in docs/operating.md")

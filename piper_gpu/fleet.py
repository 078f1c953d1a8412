"""python -m piper_gpu fleet INVENTORY [--limit PATTERN|@FILE ...] [--serial N|P%] [--keep-going | --max-fail P]
[--health-timeout S] [--json FILE] [--retry-file FILE] [--log-dir DIR] [--deploy FILE] [pyinfra options ...]

The deploy on every host of a pyinfra inventory (SSH hosts, ``@local``, ``@chroot/...``), each host on its
own: one ``pyinfra -y INVENTORY DEPLOY --limit HOST`` process per host, so that a preflight refusal, a
traceback or a lost connection ends that host's run and no other. The server wheel is built once, before
any host (each run finds it in the cache, ``PIPER_GPU_SERVER_WHEELS``).

Hosts run in inventory order, ``--serial`` at a time (a number, or a percentage of the hosts as Ansible's
``serial`` counts it: rounded down, at least one); without it, all at once. A host whose run succeeded
passes the health gate before it counts as ok: GET /health answers as the service's own process (the pid
of its pid file or unit, with a start token; the unit's InvocationID under systemd) and ``diagnose`` finds
nothing failed, both retried until ``--health-timeout``. After a batch with a host not ok, the next
batches do not start, unless ``--keep-going``, or unless the hosts not ok stay within ``--max-fail``
percent of all the hosts.

At the end, also when the run stopped early: one row per host (ok, refused by preflight, failed at a
step, unreachable, unhealthy, not started) with its changes and seconds; the hosts to run again in the
retry file (``--limit @FILE`` runs them); the same as JSON with ``--json``. Exit status 0 only when every
host is ok.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Protocol

OK = "ok"
REFUSED = "refused"
FAILED = "failed"
UNREACHABLE = "unreachable"
UNHEALTHY = "unhealthy"
NOT_STARTED = "not started"
#: How a status reads in the summary's first column.
LABELS = {OK: "ok", REFUSED: "refused by preflight", FAILED: "failed", UNREACHABLE: "unreachable",
          UNHEALTHY: "unhealthy", NOT_STARTED: "not started"}
#: Seconds between two tries of the health gate.
HEALTH_RETRY_SECONDS = 2.0
DEFAULT_HEALTH_TIMEOUT = 120.0


class FleetError(RuntimeError):
    """The fleet cannot start (the inventory, a --limit, the deploy file, the server wheel)."""


# --------------------------------------------------------------------------------------------------
# Hosts: what the inventory names, and how verify reaches each one
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reach:
    """How testinfra (the health gate, ``diagnose``) reaches a host: its --hosts spec and options."""
    hosts: str
    connection: str | None = None
    sudo: bool = False
    ssh_identity_file: str | None = None
    ssh_config: str | None = None

    def diagnose_args(self) -> list[str]:
        return ([f"--hosts={self.hosts}"] + ([f"--connection={self.connection}"] if self.connection else [])
                + (["--sudo"] if self.sudo else [])
                + ([f"--ssh-identity-file={self.ssh_identity_file}"] if self.ssh_identity_file else [])
                + ([f"--ssh-config={self.ssh_config}"] if self.ssh_config else []))

    def testinfra_host(self):
        import testinfra

        options = {k: v for k, v in (("connection", self.connection), ("ssh_identity_file", self.ssh_identity_file),
                                     ("ssh_config", self.ssh_config)) if v}
        return testinfra.get_host(self.hosts, sudo=self.sudo, **options)


@dataclass(frozen=True)
class FleetHost:
    name: str
    #: None: a connector the health gate cannot reach (the host is then reported unhealthy, saying so)
    reach: Reach | None = None


def reach_of(name: str, data: dict) -> Reach | None:
    """The testinfra connection for a pyinfra host: ``@local``, ``@chroot/PATH``, ``@docker/ID``, SSH
    (a plain name or ``@ssh/NAME``, with ``ssh_hostname``, ``ssh_user``, ``ssh_port``, ``ssh_key``,
    ``ssh_config_file``). As the deploy does, verify uses sudo where the data asks for ``_sudo`` (and for
    an SSH user other than root: verify reads files only root may read)."""
    sudo = bool(data.get("_sudo"))
    if name == "@local":
        return Reach("local://", sudo=sudo)
    if name.startswith("@chroot/"):
        return Reach(name.removeprefix("@chroot/"), connection="chroot")
    if name.startswith("@docker/"):
        return Reach(f"docker://{name.removeprefix('@docker/')}", sudo=sudo)
    if name.startswith("@") and not name.startswith("@ssh/"):
        return None
    hostname = data.get("ssh_hostname") or name.removeprefix("@ssh/")
    user = data.get("ssh_user")
    port = data.get("ssh_port")
    spec = "ssh://" + (f"{user}@" if user else "") + (f"[{hostname}]" if ":" in hostname else hostname) + (
        f":{port}" if port else "")
    return Reach(spec, sudo=sudo or (user not in (None, "root")), ssh_identity_file=data.get("ssh_key"),
                 ssh_config=data.get("ssh_config_file"))


def load_inventory(inventory: str) -> tuple[list[FleetHost], dict[str, list[str]]]:
    """The inventory's hosts in its order, and its groups (name -> host names), as pyinfra reads it."""
    from pyinfra.api import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    if not Path(inventory).exists() and "@" not in inventory and "," not in inventory:
        raise FleetError(f"inventory {inventory}: no such file")
    try:
        with ctx_state.use(State()):  # pyinfra executes the inventory file in a state, as its CLI does
            inv = make_inventory(inventory, cwd=os.getcwd())
    except Exception as exc:  # pyinfra's own errors and the inventory file's: name the file, keep the cause
        raise FleetError(f"inventory {inventory}: pyinfra cannot load it: {type(exc).__name__}: {exc}") from exc
    hosts = [FleetHost(h.name, reach_of(h.name, dict(h.data.dict()))) for h in inv]
    groups = {name: [h.name for h in inv.get_group(name)] for name in inv.groups}
    return hosts, groups


def limit_patterns(limits: list[str], names: set[str] = frozenset()) -> list[str]:
    """--limit values: host names, groups or fnmatch patterns, comma-separated; ``@FILE`` reads a retry
    file (one host a line), unless the value is itself a host's name (``@local``)."""
    patterns = []
    for value in limits:
        if value.startswith("@") and value not in names and Path(value[1:]).is_file():
            patterns += [line.strip() for line in Path(value[1:]).read_text().splitlines() if line.strip()]
        else:
            patterns += [p for p in value.split(",") if p]
    return patterns


def select(hosts: list[FleetHost], groups: dict[str, list[str]], patterns: list[str]) -> list[FleetHost]:
    """The hosts a --limit names (a group's, or names matching a pattern, as pyinfra's --limit), in
    inventory order; a pattern that names none is an error."""
    if not patterns:
        return hosts
    wanted: set[str] = set()
    for pattern in patterns:
        names = groups.get(pattern) or [h.name for h in hosts if h.name == pattern or fnmatch(h.name, pattern)]
        if not names:
            raise FleetError(f"--limit {pattern}: no host or group of the inventory matches it "
                             f"(hosts: {', '.join(h.name for h in hosts)})")
        wanted.update(names)
    return [h for h in hosts if h.name in wanted]


# --------------------------------------------------------------------------------------------------
# Batches and the rule that stops them
# --------------------------------------------------------------------------------------------------

def parse_serial(text: str) -> str:
    """--serial: a whole number >= 1, or a percentage 1%..100%."""
    m = re.fullmatch(r"(\d+)(%?)", text.strip())
    if not m or int(m.group(1)) < 1 or (m.group(2) and int(m.group(1)) > 100):
        raise argparse.ArgumentTypeError(f"--serial {text!r}: give a number of hosts (1, 2, ...) or a percentage "
                                         "of them (1% to 100%)")
    return text.strip()


def parse_percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"--max-fail {text!r}: give a percentage of the hosts, 0 to 100")
    return value


def batch_size(serial: str | None, total: int) -> int:
    """Hosts per batch: all without --serial; a percentage of ``total`` rounded down, at least one
    (Ansible's pct_to_int); a number as given."""
    if serial is None:
        return max(total, 1)
    if serial.endswith("%"):
        return int(int(serial[:-1]) / 100 * total) or 1
    return int(serial)


def batches(hosts: list, size: int) -> list[list]:
    return [hosts[i:i + size] for i in range(0, len(hosts), size)]


def stop_reason(results: list["HostResult"], total: int, keep_going: bool, max_fail: float | None) -> str | None:
    """Why the next batch must not start, or None. Without --keep-going, any host not ok stops the run,
    unless the hosts not ok are at most --max-fail percent of all ``total`` hosts."""
    bad = [r for r in results if r.status != OK]
    if not bad or keep_going:
        return None
    share = 100 * len(bad) / total
    if max_fail is not None and share <= max_fail:
        return None
    limit = f"more than --max-fail {max_fail:g}%" if max_fail is not None else "and neither --keep-going nor --max-fail"
    return (f"{len(bad)} of {total} hosts not ok ({share:.0f}%, {limit}; first: {bad[0].host}, "
            f"{bad[0].label})")


# --------------------------------------------------------------------------------------------------
# One host's result, from its pyinfra run and its health gate
# --------------------------------------------------------------------------------------------------

@dataclass
class HostResult:
    host: str
    status: str
    #: refused: preflight's reason; failed: the first error line; unreachable: the connection error;
    #: unhealthy: what the gate found; not started: why
    detail: str = ""
    #: failed: the operation (step) that failed
    step: str = ""
    changes: int | None = None
    #: the whole host: its pyinfra run and its health gate
    seconds: float = 0.0
    #: of which the health gate
    health_seconds: float | None = None
    log: str = ""

    @property
    def label(self) -> str:
        return f"failed at {self.step}" if self.status == FAILED and self.step else LABELS[self.status]


@dataclass
class Converged:
    """One host's pyinfra run."""
    returncode: int
    output: str
    seconds: float
    log: str = ""


GRAND_TOTAL = re.compile(r"^\s*Grand total\s+(\d+)\s+(\S+)", re.M)
#: pyinfra pads the host's prefix to the longest name of the inventory
COULD_NOT_CONNECT = re.compile(r"^\s*\[(?P<host>[^\]]+)\]\s+Could not connect \((?P<why>.*)\)\s*$", re.M)
#: pyinfra's last line for a PyinfraError: "--> pyinfra error[ in FILE line N]: MESSAGE" (MESSAGE may go on)
PYINFRA_ERROR = re.compile(r"^--> pyinfra error(?: in (?P<where>.+?) line \d+)?: (?P<message>.*)$", re.M)
STARTING_OPERATION = re.compile(r"^--> Starting operation: (?P<op>.+?)\s*$", re.M)
EXCEPTION_IN = re.compile(r"^--> An (?:unexpected )?exception occurred in: (?P<where>.+?):?\s*$", re.M)
HOST_PREFIX = re.compile(r"^\s*\[[^\]]+\]\s*")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def count_changes(output: str) -> int | None:
    """Operations that changed something: the "Success" column of pyinfra's results table."""
    m = GRAND_TOTAL.search(output)
    if not m:
        return None
    return 0 if m.group(2) == "-" else int(m.group(2))


def first_error_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def failed_operation(output: str) -> tuple[str, str]:
    """(the operation that failed, the first line it printed) from pyinfra's log of the operation run:
    the last "Starting operation", and under it the host's first line that is not a success."""
    ops = list(STARTING_OPERATION.finditer(output))
    if not ops:
        return "", ""
    tail = output[ops[-1].end():].split("\n--> ")[0]
    lines = [HOST_PREFIX.sub("", line).strip() for line in tail.splitlines()]
    said = [line for line in lines if line and line not in ("Success", "No changes", "Skipped")]
    return ops[-1].group("op"), (said or [""])[0]


def classify(name: str, run: Converged) -> HostResult:
    """What one host's pyinfra run did: ok (for now: the health gate decides), unreachable, refused by
    preflight (pyinfra stopped while preparing, on the deploy's own error: nothing ran on the host), or
    failed at a named step: the operation that failed, or "prepare" for a traceback before any ran."""
    output = ANSI.sub("", run.output)
    result = HostResult(name, OK, changes=count_changes(output), seconds=run.seconds, log=run.log)
    connect = COULD_NOT_CONNECT.search(output)
    if connect:
        result.status, result.detail = UNREACHABLE, f"could not connect ({connect.group('why')})"
        return result
    if run.returncode == 0:
        return result
    error = PYINFRA_ERROR.search(output)
    started = STARTING_OPERATION.search(output)
    if error and not started and error.group("where"):
        result.status, result.detail = REFUSED, output[error.start("message"):].strip()
        return result
    result.status = FAILED
    exception = EXCEPTION_IN.search(output)
    if exception and not started:
        last = [line.strip() for line in output[exception.end():].splitlines() if line.strip()]
        result.step, result.detail = "prepare", (last or [f"an exception in {exception.group('where')}"])[-1]
        return result
    step, line = failed_operation(output)
    result.step = step or "prepare"
    result.detail = line or (error.group("message") if error else f"pyinfra exited {run.returncode}")
    return result


# --------------------------------------------------------------------------------------------------
# The health gate
# --------------------------------------------------------------------------------------------------

#: Run on the host: the service's pid (pid file, or the unit's MainPID and InvocationID) and GET /health.
IDENTITY = r'''
import json, subprocess, urllib.request
t = json.load(open("/etc/piper-gpu/target.json"))
out = {"mode": t["service_mode"], "url": t["base_url"] + "/health", "token": None}
if t["service_mode"] == "systemd":
    def show(p):
        return subprocess.run(["systemctl", "show", "-p", p, "--value", t["unit"]], capture_output=True,
                              text=True).stdout.strip()
    out["pid"], out["token"], out["pid_source"] = show("MainPID"), show("InvocationID"), "MainPID of " + t["unit"]
else:
    try:
        out["pid"] = open(t["pid_file"]).read().strip()
    except OSError:
        out["pid"] = ""
    out["pid_source"] = "pid file " + t["pid_file"]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(out["url"], timeout=5) as r:
        out["health"] = json.loads(r.read())
except Exception as exc:
    out["error"] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(out))
'''


def identity_problem(found: dict) -> str | None:
    """None when GET /health answers status ok as the service's own process: the pid of its pid file or
    unit, with a start token (under systemd, the unit's InvocationID); else what answered instead."""
    url = found.get("url", "/health")
    if found.get("error"):
        return f"GET {url}: {found['error']}"
    health = found.get("health") or {}
    pid, source = str(found.get("pid") or "").strip(), found.get("pid_source", "the service")
    if health.get("status") != "ok":
        return f"GET {url} answers status {health.get('status')!r}, not 'ok'"
    if not pid.isdigit() or pid == "0":
        return f"the service has no pid ({source}: {pid or 'empty'}), yet pid {health.get('pid')} answers {url}"
    if str(health.get("pid")) != pid:
        return f"GET {url} answers as pid {health.get('pid')}, not the service's pid {pid} ({source})"
    if not health.get("start_token"):
        return f"GET {url} answers as pid {pid} without a start token: not a server this deploy started"
    if found.get("token") and health["start_token"] != found["token"]:
        return (f"GET {url} answers with start token {health['start_token']}, not the unit's InvocationID "
                f"{found['token']}")
    return None


def diagnose_problem(results: list[dict]) -> str | None:
    failed = [r for r in results if r.get("outcome") == "failed"]
    if not results:
        return "diagnose ran no check"
    if not failed:
        return None
    first = failed[0]
    return (f"diagnose: {len(failed)} check(s) failed, first {first.get('module', '').removeprefix('test_')} / "
            f"{first.get('check')}: {first.get('found', '?')}")


# --------------------------------------------------------------------------------------------------
# Running the fleet
# --------------------------------------------------------------------------------------------------

class Runner(Protocol):
    def converge(self, host: FleetHost) -> Converged: ...

    def health(self, host: FleetHost, timeout: float) -> str | None: ...


def log_name(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", host).strip("_") or "host"


@dataclass
class PyinfraRunner:
    """Each host in a pyinfra process of its own; the health gate through testinfra and diagnose."""
    inventory: str
    deploy: str
    log_dir: Path
    pyinfra_args: list[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)

    def command(self, host: FleetHost) -> list[str]:
        return [sys.executable, "-m", "pyinfra", "-y", self.inventory, self.deploy, "--limit", glob.escape(host.name),
                *self.pyinfra_args]

    def converge(self, host: FleetHost) -> Converged:
        started = time.monotonic()
        log = self.log_dir / f"{log_name(host.name)}.log"
        proc = subprocess.run(self.command(host), env={**os.environ, **self.env}, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        log.write_text(f"$ {shlex.join(self.command(host))}\n{proc.stdout}")
        return Converged(proc.returncode, proc.stdout, time.monotonic() - started, str(log))

    def identity(self, reach: Reach) -> str | None:
        res = reach.testinfra_host().run("python3 -c %s", IDENTITY)
        if res.rc != 0:
            return f"reading the service's identity on the host failed ({res.rc}): " + (
                (res.stderr or res.stdout).strip().splitlines() or ["no output"])[-1]
        return identity_problem(json.loads(res.stdout))

    def diagnose(self, host: FleetHost, reach: Reach) -> str | None:
        with tempfile.TemporaryDirectory(prefix="piper-gpu-fleet-") as tmp:
            out = Path(tmp, "diagnose.json")
            cmd = [sys.executable, "-m", "piper_gpu", "diagnose", *reach.diagnose_args(), "--json", str(out)]
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            with open(self.log_dir / f"{log_name(host.name)}.log", "a") as log:
                log.write(f"\n$ {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}")
            if not out.is_file():
                return f"diagnose did not run ({proc.returncode}): {first_error_line(proc.stderr[-2000:])}"
            return diagnose_problem(json.loads(out.read_text()))

    def health(self, host: FleetHost, timeout: float) -> str | None:
        if host.reach is None:
            return (f"the health gate cannot reach {host.name} (no testinfra connection for this connector); "
                    "check it with python -m piper_gpu diagnose")
        return gate(lambda: self.identity(host.reach) or self.diagnose(host, host.reach), timeout)


def gate(check, timeout: float, pause: float = HEALTH_RETRY_SECONDS, clock=time.monotonic, sleep=time.sleep) -> str | None:
    """``check()`` until it finds nothing wrong (None) or ``timeout`` seconds have passed; its last problem."""
    deadline = clock() + timeout
    while True:
        try:
            problem = check()
        except Exception as exc:  # a lost connection, an unreadable record: the host's, reported as such
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None or clock() + pause > deadline:
            return problem
        sleep(pause)


def run_host(host: FleetHost, runner: Runner, health_timeout: float) -> HostResult:
    """Converge one host, then gate on its health. Whatever goes wrong stays this host's result."""
    started = time.monotonic()
    try:
        result = classify(host.name, runner.converge(host))
        if result.status == OK:
            gate_started = time.monotonic()
            problem = runner.health(host, health_timeout)
            result.health_seconds = round(time.monotonic() - gate_started, 1)
            if problem:
                result.status, result.detail = UNHEALTHY, problem
    except Exception as exc:
        result = HostResult(host.name, FAILED, detail=f"{type(exc).__name__}: {exc}", step="the fleet's own run")
    result.seconds = round(time.monotonic() - started, 1)
    return result


def run_fleet(hosts: list[FleetHost], runner: Runner, serial: str | None = None, keep_going: bool = False,
              max_fail: float | None = None, health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
              say=print, done: dict[str, HostResult] | None = None) -> list[HostResult]:
    """Every host, in batches; a result for each, in inventory order (``not started`` after a stop).
    ``done`` collects each result as its host ends (what is known when the run is interrupted)."""
    done = {} if done is None else done
    groups = batches(hosts, batch_size(serial, len(hosts)))
    lock = threading.Lock()

    def one(host: FleetHost) -> HostResult:
        result = run_host(host, runner, health_timeout)
        with lock:
            say(f"fleet: [{host.name}] {result.label}" + (f": {one_line(result.detail)}" if result.detail else "")
                + f" ({result.changes if result.changes is not None else '?'} changes, {result.seconds:.1f} s)")
        return result

    for n, batch in enumerate(groups, 1):
        say(f"fleet: batch {n}/{len(groups)}: {', '.join(h.name for h in batch)}")
        for host in batch:  # until its own result replaces it: what an interrupted run says of it
            done[host.name] = HostResult(host.name, FAILED, step="an interrupted run",
                                         detail="the fleet run was interrupted while this host ran (see its log)")
        with ThreadPoolExecutor(max_workers=len(batch)) as pool:
            for host, result in zip(batch, pool.map(one, batch)):
                done[host.name] = result
        reason = stop_reason(list(done.values()), len(hosts), keep_going, max_fail)
        if reason and n < len(groups):
            say(f"fleet: stopping before batch {n + 1}: {reason}")
            for host in (h for later in groups[n:] for h in later):
                done[host.name] = HostResult(host.name, NOT_STARTED, detail=f"stopped after batch {n}: {reason}")
            break
    return [done[h.name] for h in hosts]


# --------------------------------------------------------------------------------------------------
# What the operator gets: the summary, the retry file, the JSON, the exit status
# --------------------------------------------------------------------------------------------------

def summary(results: list[HostResult]) -> str:
    width = max([len(r.host) for r in results] + [4])
    status_width = max([len(r.label) for r in results] + [6])
    lines = [f"{'host':{width}}  {'status':{status_width}}  {'changes':>7}  {'seconds':>7}  detail"]
    for r in results:
        changes = "-" if r.changes is None else str(r.changes)
        lines.append(f"{r.host:{width}}  {r.label:{status_width}}  {changes:>7}  {r.seconds:>7.1f}  "
                     f"{one_line(r.detail)}")
    counts = {s: sum(r.status == s for r in results) for s in LABELS}
    lines.append(", ".join(f"{n} {LABELS[s]}" for s, n in counts.items() if n) or "no hosts")
    return "\n".join(lines)


def retry_hosts(results: list[HostResult]) -> list[str]:
    return [r.host for r in results if r.status != OK]


def write_retry_file(path: Path, results: list[HostResult]) -> bool:
    """The hosts not ok, one a line; no file when every host is ok (a stale one is removed)."""
    hosts = retry_hosts(results)
    if hosts:
        path.write_text("".join(f"{h}\n" for h in hosts))
        return True
    path.unlink(missing_ok=True)
    return False


def exit_status(results: list[HostResult]) -> int:
    return 0 if results and all(r.status == OK for r in results) else 1


def report(results: list[HostResult], retry_file: Path | None = None) -> dict:
    return {"ok": exit_status(results) == 0, "hosts": [{**asdict(r), "label": r.label} for r in results],
            "retry": retry_hosts(results), "retry_file": str(retry_file) if retry_file else None}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inventory", help="a pyinfra inventory (file, or hosts as pyinfra takes them)")
    p.add_argument("--limit", action="append", default=[], metavar="PATTERN|@FILE",
                   help="only these hosts: names, groups or patterns (repeatable, comma-separated); @FILE: a retry file")
    p.add_argument("--serial", type=parse_serial, metavar="N|P%",
                   help="hosts at a time, in inventory order (a number or a percentage); default: all at once")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--keep-going", action="store_true", help="with --serial: run every batch whatever fails")
    stop.add_argument("--max-fail", type=parse_percent, metavar="P",
                      help="with --serial: go on while the hosts not ok are at most P%% of all the hosts")
    p.add_argument("--health-timeout", type=float, default=DEFAULT_HEALTH_TIMEOUT, metavar="S",
                   help="seconds the health gate retries /health and diagnose (default %(default)g)")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="also write the summary as JSON")
    p.add_argument("--retry-file", default="fleet.retry", metavar="FILE",
                   help="the hosts to run again, one a line (default %(default)s; removed when every host is ok)")
    p.add_argument("--log-dir", default="fleet-logs", metavar="DIR",
                   help="each host's pyinfra output and diagnose screen (default %(default)s)")
    p.add_argument("--deploy", default="deploy.py", metavar="FILE", help="the deploy file (default %(default)s)")


def main(args, pyinfra_args: list[str]) -> int:
    from piper_gpu import server_wheel

    try:
        if not Path(args.deploy).is_file():
            raise FleetError(f"deploy file {args.deploy}: no such file (run from the checkout, or give --deploy FILE)")
        hosts, groups = load_inventory(args.inventory)
        hosts = select(hosts, groups, limit_patterns(args.limit, {h.name for h in hosts}))
        if not hosts:
            raise FleetError(f"inventory {args.inventory} has no hosts")
        wheel = server_wheel.build()  # once, before any host: every run finds it in the cache
    except (FleetError, server_wheel.ServerBuildError) as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 2
    print(f"fleet: server wheel {wheel.filename} (built once, {wheel.path.parent})")
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    runner = PyinfraRunner(args.inventory, args.deploy, log_dir, pyinfra_args,
                           env={"PIPER_GPU_SERVER_WHEELS": str(server_wheel.cache_dir())})
    done: dict[str, HostResult] = {}
    try:
        run_fleet(hosts, runner, args.serial, args.keep_going, args.max_fail, args.health_timeout, done=done)
    finally:  # also when interrupted: the summary and the retry file of what is known
        results = [done.get(h.name) or HostResult(h.name, NOT_STARTED, detail="the fleet run was interrupted")
                   for h in hosts]
        retry = Path(args.retry_file)
        print("\n" + summary(results))
        if write_retry_file(retry, results):
            print(f"\nRun the hosts not ok again: python -m piper_gpu fleet {shlex.quote(args.inventory)} "
                  f"--limit @{shlex.quote(str(retry))}   (their pyinfra output: {log_dir}/)")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(report(results, retry if retry.exists() else None), indent=2) + "\n")
    return exit_status(results)

"""python -m piper_gpu diagnose --hosts=HOST [--connection=...] [--sudo] [--json FILE]
python -m piper_gpu bundle OUT --settings FILE.json [--repo-path debian12] [--python 3.11]
python -m piper_gpu lock --python 3.10 [--platform wsl2-ubuntu2204] [--resolve | --check]
python -m piper_gpu pin-voices [--voice NAME ...] [--settings FILE.json] [--data KEY=VALUE] [--write FILE]
python -m piper_gpu fleet INVENTORY [--limit PATTERN|@FILE] [--serial N|P%] [--keep-going | --max-fail P] [--json FILE]

diagnose runs the verify/ checks against a provisioned host and prints one screen: pass/fail/skip
per step of the plan, and for each failure what was found, what was expected and the exact fix.
Exit status: 0 when nothing failed, 1 otherwise. bundle: see piper_gpu/bundle.py.
lock: print the venv lock a host with that Python gets (one name==version per line); --resolve
rewrites piper_gpu/locks/python<X.Y>.txt from pip's resolver; --check downloads each pinned wheel for
that Python (exit 1, naming the pins that have none). See piper_gpu/locks.py.
pin-voices: download the configured voices from their source and print (or --write into group data)
their sha256 pins: piper_gpu/pin_voices.py. Settings (--settings, --data) use the data keys piper_gpu_*.
fleet: the deploy on every host of an inventory, each host on its own, in batches with a health gate,
and a summary per host: piper_gpu/fleet.py (other options pass to each host's pyinfra).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pytest

from piper_gpu.resources import data_dir

VERIFY = data_dir("verify")


def step_of(module: str) -> str:
    """The plan step a verify module checks: test_cudnn -> cudnn."""
    return module.removeprefix("test_")


class Collector:
    def __init__(self):
        self.results: list[dict] = []

    def pytest_collectreport(self, report):
        """A verify module that cannot even be collected is a failure to show, not an empty screen."""
        if report.failed:
            module = report.nodeid.rsplit("/", 1)[-1].removesuffix(".py") or "verify"
            self.results.append({"check": "collect", "module": module, "outcome": "failed",
                                 "found": str(report.longrepr).strip().splitlines()[-1][:300]})

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        rep = outcome.get_result()
        if rep.when == "call" or rep.outcome != "passed":
            if rep.when == "teardown" and rep.outcome == "passed":
                return
            params = {k: v for k, v in getattr(getattr(item, "callspec", None), "params", {}).items()
                      if k != "_testinfra_host"}
            name = item.originalname.removeprefix("test_") + (f"[{','.join(map(str, params.values()))}]" if params else "")
            entry = {"check": name, "module": item.module.__name__, "outcome": rep.outcome}
            if rep.skipped and isinstance(rep.longrepr, tuple):
                entry["reason"] = rep.longrepr[2].removeprefix("Skipped: ")
            elif rep.failed and call.excinfo is not None:
                text = str(call.excinfo.value)
                fields = dict(re.findall(r"^(FOUND|EXPECTED|FIX): (.*)$", text, re.M))
                entry.update({k.lower(): v for k, v in fields.items()})
                if not fields:
                    entry["found"] = f"{call.excinfo.typename}: {text.strip().splitlines()[0] if text.strip() else ''}"[:300]
            self.results.append(entry)


def render_screen(results: list[dict], host: str) -> str:
    out = [f"piper-gpu diagnose: {host}", ""]
    width = max((len(r["check"]) for r in results), default=20)
    for r in results:
        step = step_of(r["module"])
        mark = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[r["outcome"]]
        note = f"  ({r['reason']})" if r.get("reason") else ""
        out.append(f"  {step:14} {r['check']:{width}}  {mark}{note}")
    failed = [r for r in results if r["outcome"] == "failed"]
    if failed:
        out += ["", "What is wrong, and the fix:"]
        for r in failed:
            out.append(f"  x {step_of(r['module'])} / {r['check']}")
            out.append(f"      cause:    {r.get('found', '?')}")
            if r.get("expected"):
                out.append(f"      expected: {r['expected']}")
            if r.get("fix"):
                out.append(f"      fix:      {r['fix']}")
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("passed", "failed", "skipped")}
    out += ["", f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"]
    return "\n".join(out)


def diagnose(hosts: str, extra: list[str], json_out: str | None = None) -> tuple[int, list[dict]]:
    collector = Collector()
    # --collect-in-virtualenv: from an installed wheel, verify/ lies inside the operator's venv
    args = [str(VERIFY), f"--hosts={hosts}", "--collect-in-virtualenv", "-p", "no:cacheprovider", "-p", "no:terminal",
            *extra]
    pytest.main(args, plugins=[collector])
    results = collector.results
    print(render_screen(results, hosts))
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2) + "\n")
    return (1 if any(r["outcome"] == "failed" for r in results) or not results else 0), results


def lock(args) -> int:
    from piper_gpu import locks, platforms
    from piper_gpu.settings import SettingsError, cli_data, settings_from

    data = cli_data(None, args.data)
    try:
        s = settings_from(data, validate=False)  # voices and their checksums play no part in a lock
        if args.resolve:
            from piper_gpu import server_wheel

            top = {"piper-tts": s.venv.piper_tts_version, "onnxruntime-gpu": s.venv.onnxruntime_gpu_version}
            requires = tuple(r for r in server_wheel.build().requires if not r.startswith("piper-tts"))
            current = locks.parse(locks.path(args.python).read_text()) if args.python in locks.available() else {}
            pins = locks.resolve(args.python, top, s.pip_source_args(), requires, current)
            print(f"wrote {locks.write(args.python, {n: v for n, v in pins.items() if n not in top}, top, requires)}")
            return 0
        locks.load(args.python)  # refuses a Python without a lock, naming the ones there are
        fits = [pl for pl in platforms.PLATFORMS if pl.python == args.python]
        platform = platforms.by_key(args.platform) if args.platform else (fits or [platforms.PLATFORMS[0]])[0]
        resolved = s.for_host(platform, args.python)
        resolved.check_matrix()
        pins = resolved.python_requirements()
    except (locks.LockError, SettingsError, platforms.UnsupportedPlatform) as exc:
        print(f"lock: {exc}", file=sys.stderr)
        return 1
    if args.check:
        failures = locks.check(args.python, pins, Path(args.download_dir), s.pip_source_args())
        for pin, reason in failures.items():
            print(f"lock: {pin} has no wheel for CPython {args.python} on manylinux x86_64: {reason}", file=sys.stderr)
        print(f"{len(pins) - len(failures)} of {len(pins)} pins have a wheel for CPython {args.python}")
        return 1 if failures else 0
    print("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())), end="")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m piper_gpu", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("diagnose", help="run the verify checks and explain each failure")
    d.add_argument("--hosts", required=True, help="testinfra host spec: local://, ssh://user@host, /root --connection=chroot")
    d.add_argument("--json", dest="json_out", help="also write the results as JSON")
    b = sub.add_parser("bundle", help="collect every artifact a deploy needs into a directory (offline hosts)")
    b.add_argument("out", help="directory to write (re-running skips files already there and verified)")
    b.add_argument("--settings", help="JSON file of settings (as in group data); pins and sources to bundle from")
    b.add_argument("--data", action="append", metavar="KEY=VALUE", help="one setting (repeatable), like pyinfra --data")
    b.add_argument("--repo-path", default="ubuntu2204",
                   help="NVIDIA repository path of the target hosts: wsl-ubuntu, ubuntu2204, ubuntu2404, debian12")
    b.add_argument("--arch", default="x86_64")
    b.add_argument("--python", default="3.11", help="the targets' python3 version (wheel ABI): 3.10, 3.11, 3.12")
    lk = sub.add_parser("lock", help="the venv lock for a Python: print, --resolve or --check")
    lk.add_argument("--python", required=True, help="the host's python3: 3.10 (Ubuntu 22.04), 3.11 (Debian 12), 3.12")
    lk.add_argument("--platform", help="platform table key (default: the first with that Python): "
                                       "decides cuda_source and so whether NVIDIA's wheels are in the venv")
    lk.add_argument("--data", action="append", metavar="KEY=VALUE", help="one setting (repeatable)")
    mode = lk.add_mutually_exclusive_group()
    mode.add_argument("--resolve", action="store_true", help="rewrite the lock file from pip's resolver (PyPI)")
    mode.add_argument("--check", action="store_true", help="download every pinned wheel for that Python")
    lk.add_argument("--download-dir", default="/var/cache/piper-gpu-deploy/lock-check", help="with --check")
    pv = sub.add_parser("pin-voices", help="download the configured voices and print their sha256 pins for group data")
    pv.add_argument("--voice", action="append", metavar="NAME", help="a voice name (repeatable); default: the settings'")
    pv.add_argument("--settings", help="JSON file of settings (data keys, as in group data)")
    pv.add_argument("--data", action="append", metavar="KEY=VALUE", help="one setting (repeatable), like pyinfra --data")
    pv.add_argument("--write", metavar="FILE", help="put the piper_gpu_voices assignment into FILE (e.g. group_data/all.py)")
    from piper_gpu import fleet

    fl = sub.add_parser("fleet", help="deploy an inventory host by host: batches, health gate, summary, retry file")
    fleet.add_arguments(fl)
    args, extra = p.parse_known_args(argv)
    if args.command == "fleet":
        return fleet.main(args, extra)
    if args.command == "lock":
        if extra:
            p.error(f"unrecognised arguments: {' '.join(extra)}")
        return lock(args)
    if args.command == "pin-voices":
        from piper_gpu import pin_voices

        if extra:
            p.error(f"unrecognised arguments: {' '.join(extra)}")
        return pin_voices.main(args)
    if args.command == "bundle":
        from piper_gpu import bundle

        if extra:
            p.error(f"unrecognised arguments: {' '.join(extra)}")
        return bundle.main(args)
    rc, _ = diagnose(args.hosts, extra, args.json_out)
    return rc


if __name__ == "__main__":
    sys.exit(main())

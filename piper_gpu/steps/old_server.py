"""The CPU server a manual setup left (found by preflight, decided in migration.py): a copy of each file
the run will edit, kept before the run changes anything of the user's; then, just before the service
(re)starts, the old server stopped the way the users' plan stops it, its autostart turned off and its
script moved to a dated backup, each named with its paths, each in the ledger undeploy reads to put it
back. The old server keeps answering its clients until the new one is about to take over."""

from __future__ import annotations

import json
import time

from pyinfra.api import deploy
from pyinfra.operations import files

from piper_gpu.migration import DISABLED, Migration
from piper_gpu.operations import copies_kept, lines_disabled, moved_aside, processes_stopped, unit_disabled
from piper_gpu.target import MOVED_ASIDE, OLD_SERVER_RECORD, Target

#: Seconds the old server has to exit after SIGTERM (a Flask or http.server process exits at once).
STOP_WAIT = 15


def _autostart_files(m: Migration) -> dict[str, list[tuple[int, str]]]:
    by_file: dict[str, list[tuple[int, str]]] = {}
    for path, number, text in m.autostart:
        by_file.setdefault(path, []).append((number, text))
    return dict(sorted(by_file.items()))


def unit_actions(target: Target) -> list[tuple[str, bool]]:
    """The old server's units the run acts on, (unit file, enabled): an enabled one is disabled and stopped;
    a disabled one is stopped where systemd runs and the run stops its process."""
    m: Migration = target.migration
    return [(u, e) for u, e in m.units if e or (m.stop and target.systemd_running)]


@deploy("The old CPU server: its files kept as they are")
def old_server_files_kept(target: Target):
    """Before the run edits anything: a copy of each shell start-up file or crontab whose lines start the
    old server (the run appends its CUDA block to ~/.bashrc later, and turns those lines off at the end)."""
    m: Migration | None = target.migration
    files_ = list(_autostart_files(m)) if m and not target.wsl_needs_restart else []
    if files_:
        copies_kept(name=f"Keep a copy of {', '.join(files_)} as it is before this run (the old server's autostart "
                         "lines in it are turned off later in the run)",
                    paths=files_, backups=[target.backup_path(f) for f in files_])


@deploy("The old CPU server: stopped, its autostart off, its script kept aside")
def old_server(target: Target):
    m: Migration | None = target.migration
    if m is None or not (m or m.own_scripts) or target.wsl_needs_restart:
        return
    for path, lines in _autostart_files(m).items():
        lines_disabled(
            name=f"Turn off the old server's autostart in {path} (line {', '.join(str(n) for n, _ in lines)}: "
                 f"{'; '.join(t.strip() for _, t in lines)}; the file as it was: {target.backup_path(path)})",
            path=path, lines=lines, prefix=DISABLED, backup=target.backup_path(path), ledger=MOVED_ASIDE,
            shell_syntax="/var/spool/cron/" not in path,
        )
    for unit_file, enabled in unit_actions(target):
        unit_disabled(name=f"{'Disable and stop' if enabled else 'Stop'} the old server's systemd unit {unit_file}"
                           + (" (undeploy enables it again)" if enabled else ""),
                      unit_file=unit_file, enabled=enabled, systemd_running=target.systemd_running,
                      ledger=MOVED_ASIDE)
    if m.stop:
        port = target.settings.service.port
        on_port = any(s.rpartition(":")[2] == str(port) for p in m.stop for s in p.sockets)
        record = {"stopped": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "address": m.address,
                  "processes": [{"pid": p.pid, "user": p.user, "cwd": p.cwd, "command": p.command,
                                 "listening": list(p.sockets)} for p in m.stop]}
        processes_stopped(
            name="Stop the old server (SIGTERM, as the plan's pkill does): "
                 + "; ".join(p.describe() for p in m.stop),
            processes=m.stop, wait_s=STOP_WAIT, record=OLD_SERVER_RECORD,
            record_text=json.dumps(record, sort_keys=True), port=port if on_port else None,
        )
    for path in m.scripts:
        moved_aside(name=f"Move the old server's script {path} to {target.backup_path(path)} (undeploy puts it back)",
                    path=path, backup=target.backup_path(path), ledger=MOVED_ASIDE)
    for path in m.own_scripts:
        files.file(name=f"Remove {path}: the server script an earlier release of this deploy rendered (its marker)",
                   path=path, present=False)


def restart_hint(target: Target) -> str:
    """What to run to have the old server answer again, when the new one failed to start in the run that
    stopped it ("" when the run stops none)."""
    m: Migration | None = target.migration
    if not m or not m.stop or target.wsl_needs_restart:
        return ""
    how = "; ".join(f"as {p.user}: cd {p.cwd} && {p.command}" for p in m.stop)
    moved = "".join(f" mv {target.backup_path(s)} {s};" for s in m.scripts)
    return (f"this run stopped the old server; to have it answer again until this is fixed:{moved} start it ({how}); "
            "or run undeploy.py, which puts back all it moved aside")

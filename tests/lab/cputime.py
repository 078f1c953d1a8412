"""Where a test run's CPU goes, from Linux's process accounting (the ``acct`` package): each process's CPU time,
command name, pid and parent pid, recorded when it exits, whatever started it (the lab's chroot and booted hosts
included). docs/testing.md, "Where the CPU goes, and the mirror's packages in zstd":

    accton /var/tmp/pacct && (time .ci/run); accton off
    .venv/bin/python -m tests.lab.cputime /var/tmp/pacct [N]   # reads it with dump-acct; the N costliest runs

It prints the CPU minutes accounted, those of each command name, and what each pytest worker started: by the
command of the worker's child (``pyinfra``: a deploy run, ``python``: a server or ``diagnose``, ...), and the
costliest of those runs with the commands inside them. A process's time is counted in whole 10 ms ticks, so
short shell commands add up to almost nothing.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(eq=False)
class Proc:
    comm: str
    cpu: float  # seconds, user + sys
    elapsed: float
    pid: int
    ppid: int
    start: float  # seconds since the epoch, whole seconds
    parent: Proc | None = None
    children: list[Proc] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.start + self.elapsed

    def tree_cpu(self) -> Counter:
        """CPU seconds of this process and everything below it, by command name."""
        total = Counter({self.comm: self.cpu})
        for child in self.children:
            total.update(child.tree_cpu())
        return total


def parse(dump: str) -> list[Proc]:
    """``dump-acct`` lines: comm|version|utime|stime|elapsed|uid|gid|mem|io|pid|ppid|flags|exit|tty|start, times in
    ticks of 1/100 s."""
    procs = []
    for line in dump.splitlines():
        f = [x.strip() for x in line.split("|")]
        if len(f) < 15:
            continue
        start = datetime.strptime(f[14], "%a %b %d %H:%M:%S %Y").timestamp()
        procs.append(Proc(f[0], (float(f[2]) + float(f[3])) / 100, float(f[4]) / 100, int(f[9]), int(f[10]), start))
    return procs


def link(procs: list[Proc]) -> None:
    """Each process's parent: the latest-started process with its parent pid that was alive when it started (pids
    are reused in a run of 200,000 processes; start times are whole seconds, hence the second's slack)."""
    by_pid: dict[int, list[Proc]] = {}
    for p in procs:
        by_pid.setdefault(p.pid, []).append(p)
    for p in procs:
        alive = [q for q in by_pid.get(p.ppid, ()) if q is not p and q.start - 1 <= p.start <= q.end + 1]
        if alive:
            p.parent = max(alive, key=lambda q: q.start)
            p.parent.children.append(p)


def workers(procs: list[Proc]) -> list[Proc]:
    """pytest's processes that run tests: pytest-xdist's workers (a ``python`` whose parent is the ``python`` of
    pytest itself, whose parent is not), else pytest itself when it ran alone."""
    def is_python(p):
        return p is not None and p.comm == "python"
    found = [p for p in procs if is_python(p) and is_python(p.parent) and not is_python(p.parent.parent)]
    return found or [p for p in procs if is_python(p) and not is_python(p.parent) and p.children]


def report(procs: list[Proc], top: int = 15) -> str:
    link(procs)
    total = sum(p.cpu for p in procs)
    lines = [f"{total / 60:.2f} CPU-minutes accounted in {len(procs)} processes", "by command name:"]
    by_comm = Counter()
    for p in procs:
        by_comm[p.comm] += p.cpu
    lines += [f"  {s / 60:7.2f} min  {c}" for c, s in by_comm.most_common(12)]
    started = [child for w in workers(procs) for child in w.children]
    kinds, runs = Counter(), Counter()
    for child in started:
        kinds[child.comm] += sum(child.tree_cpu().values())
        runs[child.comm] += 1
    lines.append("what the test workers started, by the command of their child (with all below it):")
    lines += [f"  {s / 60:7.2f} min  {runs[c]:5d} x {c}" for c, s in kinds.most_common(8)]
    lines.append(f"the {top} costliest (CPU s, own s, wall s, the commands inside):")
    for child in sorted(started, key=lambda c: -sum(c.tree_cpu().values()))[:top]:
        inside = child.tree_cpu()
        parts = ", ".join(f"{c} {s:.1f}" for c, s in inside.most_common(4) if s >= 0.05)
        lines.append(f"  {sum(inside.values()):6.1f} {child.cpu:6.1f} {child.elapsed:7.1f}  {child.comm}: {parts}")
    return "\n".join(lines)


if __name__ == "__main__":
    dumped = subprocess.run(["dump-acct", sys.argv[1]], capture_output=True, text=True, check=True).stdout
    print(report(parse(dumped), *map(int, sys.argv[2:3])))

"""tests/lab/cputime.py: process accounting records (dump-acct's lines) attributed to what pytest's workers started."""

from tests.lab import cputime


def line(comm, cpu_ticks, elapsed_ticks, pid, ppid, start="Mon Dec  7 08:01:14 2026"):
    """One dump-acct line, as dump-acct 6.6 writes it: the CPU split into user and sys ticks."""
    user, sys_ = cpu_ticks - cpu_ticks // 4, cpu_ticks // 4
    return (f"{comm:<16}|v3|{user:9.2f}|{sys_:9.2f}|{elapsed_ticks:9.2f}|     0|     0|  2476.00|     0.00|"
            f"{pid:8d}|{ppid:8d}|     |       0|__      |{start}")


RUN = "\n".join([
    # written as each process exits: children before their parents
    line("dpkg-deb", 700, 800, 200, 150, "Mon Dec  7 08:01:30 2026"),
    line("sh", 0, 900, 150, 110, "Mon Dec  7 08:01:29 2026"),
    line("pyinfra", 100, 5000, 110, 101, "Mon Dec  7 08:01:20 2026"),
    line("python", 3000, 2000, 120, 102, "Mon Dec  7 08:01:20 2026"),   # a server the other worker started
    line("python", 200, 6000, 101, 100, "Mon Dec  7 08:01:15 2026"),    # worker gw0
    line("python", 300, 6000, 102, 100, "Mon Dec  7 08:01:15 2026"),    # worker gw1
    # pid 150 again, later, under worker gw1: not the sh above
    line("sha256sum", 50, 60, 300, 150, "Mon Dec  7 08:02:00 2026"),
    line("sh", 0, 100, 150, 102, "Mon Dec  7 08:01:59 2026"),
    line("python", 10, 6100, 100, 90),                                  # pytest itself
    line("bash", 0, 6200, 90, 1),                                       # scripts/test
])


def test_each_process_is_attributed_to_the_run_a_worker_started_despite_a_reused_pid():
    procs = cputime.parse(RUN)
    cputime.link(procs)
    by = {(p.comm, p.pid, p.start): p for p in procs}
    assert sorted(w.pid for w in cputime.workers(procs)) == [101, 102]
    pyinfra = next(p for p in procs if p.comm == "pyinfra")
    assert pyinfra.tree_cpu() == {"pyinfra": 1.0, "sh": 0.0, "dpkg-deb": 7.0}
    later_sh = next(p for p in procs if p.comm == "sh" and p.ppid == 102)
    assert next(p for p in procs if p.comm == "sha256sum").parent is later_sh
    assert by[("python", 120, pyinfra.start)].parent.pid == 102


def test_the_report_sums_by_command_and_by_what_the_workers_started():
    text = cputime.report(cputime.parse(RUN), top=2)
    assert text.splitlines()[0] == f"{(7 + 1 + 30 + 2 + 3 + 0.5 + 0.1) / 60:.2f} CPU-minutes accounted in 10 processes"
    started = text.split("by the command of their child")[1].split("costliest")[0].splitlines()[1:-1]
    # the workers' own 5 s and pytest's are not what they started; the reused pid's sha256sum is gw1's sh's
    assert started == ["     0.50 min      1 x python", "     0.13 min      1 x pyinfra", "     0.01 min      1 x sh"]
    costliest = text.split("costliest")[1].splitlines()[1:]
    assert costliest == ["    30.0   30.0    20.0  python: python 30.0",
                         "     8.0    1.0    50.0  pyinfra: dpkg-deb 7.0, pyinfra 1.0"]

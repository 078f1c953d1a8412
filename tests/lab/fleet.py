"""Inventories of several sandbox hosts, for ``python -m piper_gpu fleet`` (the fleet scenario, and the
timing in docs/operating.md):

    python -m tests.lab.fleet OUT.py NAME [NAME ...] [--port 15150]   # fresh sandboxes NAME..., ports from --port
    time python -m piper_gpu fleet OUT.py

Each host is ``@chroot/ROOT`` with the data the single-host inventory (inventory/sandbox.py) gives it: no GPU
allowed, the sources at the lab's mirror, and the host's own data file (its port, its settings). The file
holds that data as Python literals, so that pyinfra and the fleet read the same inventory without the
lab's environment variables."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from piper_gpu.settings import data_keys
from tests.lab.mirror import source_settings
from tests.lab.sandbox import Sandbox, up


def host_entry(box, mirror_url: str, **settings) -> tuple[str, dict]:
    """One sandbox as an inventory host: its data file's settings, then ``settings`` over them."""
    extra = {**json.loads(box.data_file.read_text()), **settings}
    return f"@chroot/{box.root}", data_keys({"allow_no_gpu": True, **source_settings(mirror_url), **extra})


def write_inventory(path: Path, hosts: list[tuple[str, dict]], group: str = "fleet") -> Path:
    """An inventory file with one group, ``group``, of ``hosts`` in this order."""
    lines = [f'"""Sandbox hosts for the fleet (written by tests/lab/fleet.py)."""', "", f"{group} = ["]
    lines += [f"    ({name!r}, {data!r})," for name, data in hosts]
    path.write_text("\n".join(lines + ["]", ""]))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.lab.fleet", description="fresh Debian 12 sandbox hosts, "
                                "each with its own port, and an inventory of them for python -m piper_gpu fleet")
    p.add_argument("out", type=Path, help="the inventory file to write")
    p.add_argument("names", nargs="+", help="sandbox names (an existing sandbox of that name is destroyed)")
    p.add_argument("--port", type=int, default=15150, help="the first host's service port; the next ones count up")
    args = p.parse_args(argv)
    entries = []
    for n, name in enumerate(args.names):
        Sandbox(name).destroy()
        box, url = up(name, extra={"port": args.port + n})
        entries.append(host_entry(box, url))
    write_inventory(args.out, entries)
    print(f"INVENTORY={args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m tests.lab demo|up|provision|destroy [--name NAME]

demo: build/serve the local mirror, create the sandbox if missing (--persona: Debian 12, or the
users' WSL2 Ubuntu 22.04), provision it with the real deploy through pyinfra, and end with
CHANGES=<n> and SANDBOX_ROOT=<path>.
"""

from __future__ import annotations

import argparse
import sys

from tests.lab.sandbox import Sandbox, provision, stop_mirror, up


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.lab")
    p.add_argument("command", choices=["demo", "up", "destroy"])
    p.add_argument("--name", default="demo")
    p.add_argument("--persona", default="debian12", help="debian12 or wsl2-ubuntu2204 (tests/lab/personas.py)")
    args, pyinfra_args = p.parse_known_args(argv)
    if args.command == "destroy":
        Sandbox(args.name).destroy()
        stop_mirror()
        return 0
    box, url = up(args.name, persona=args.persona)
    if args.command == "up":
        print(f"SANDBOX_ROOT={box.root}\nPIPER_MIRROR_URL={url}\nPIPER_SANDBOX_DATA={box.data_file}")
        return 0
    result = provision(box, url, pyinfra_args)
    if result.returncode != 0:
        print(f"pyinfra failed (exit {result.returncode}); see its output above", file=sys.stderr)
        return result.returncode
    print(f"CHANGES={result.changes}")
    print(f"SANDBOX_ROOT={box.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

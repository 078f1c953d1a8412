"""python -m tests.lab demo|up|destroy [--name NAME] [--persona P] [--booted]

demo: build/serve the local mirror, create the sandbox if missing (--persona: Debian 12, the
users' WSL2 Ubuntu 22.04, or a new WSL2 Ubuntu 24.04; --booted: Debian 12 booted with systemd in systemd-nspawn, reached over
SSH, the service as a systemd unit), provision it with the real deploy through pyinfra, and end
with CHANGES=<n> and SANDBOX_ROOT=<path> (booted: and SANDBOX_PID=<the container's init>).
"""

from __future__ import annotations

import argparse
import sys

from tests.lab.personas import DEMO_PORTS
from tests.lab.sandbox import Sandbox, provision, stop_mirror, up

#: The booted demo's service port: the container shares this machine's loopback with the other
#: demo hosts, whose services listen on their own ports (personas.DEMO_PORTS).
BOOTED_DEMO_PORT = 5015


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.lab")
    p.add_argument("command", choices=["demo", "up", "destroy"])
    p.add_argument("--name", default="demo")
    p.add_argument("--persona", default="debian12", help="debian12, wsl2-ubuntu2204 or wsl2-ubuntu2404 (tests/lab/personas.py)")
    p.add_argument("--booted", action="store_true", help="boot the host with systemd (tests/lab/booted.py)")
    args, pyinfra_args = p.parse_known_args(argv)
    if args.command == "destroy":
        if args.booted:
            from tests.lab.booted import BootedSandbox

            BootedSandbox(args.name).destroy()
        else:
            Sandbox(args.name).destroy()
        stop_mirror()
        return 0
    extra = ({"service_mode": "systemd", "port": BOOTED_DEMO_PORT} if args.booted
             else {"port": DEMO_PORTS.get(args.persona, 5005)})
    box, url = up(args.name, extra=extra, persona=args.persona, booted=args.booted)
    if args.command == "up":
        print(f"SANDBOX_ROOT={box.root}\nPIPER_MIRROR_URL={url}\nPIPER_SANDBOX_DATA={box.data_file}")
        return 0
    if args.booted:
        result = provision(box, url, pyinfra_args, inventory="inventory/sandbox_ssh.py", env_extra=box.ssh_env)
    else:
        result = provision(box, url, pyinfra_args)
    if result.returncode != 0:
        print(f"pyinfra failed (exit {result.returncode}); see its output above", file=sys.stderr)
        return result.returncode
    print(f"CHANGES={result.changes}")
    print(f"SANDBOX_ROOT={box.root}")
    if args.booted:
        print(f"SANDBOX_PID={box.leader_pid()}")
        print(f"SSH: ssh -F {box.ssh_config} 127.0.0.1")
    return 0


if __name__ == "__main__":
    sys.exit(main())

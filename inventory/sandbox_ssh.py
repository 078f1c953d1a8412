"""The test sandbox reached over SSH, the way remote hosts are: a non-root user with sudo, a key,
sshd on 127.0.0.1 (started by the lab inside the sandbox). Not for real hosts; see ssh_example.py.

Environment: as inventory/sandbox.py, plus PIPER_SSH_PORT, PIPER_SSH_USER, PIPER_SSH_KEY.
"""

import json
import os

from piper_gpu.settings import data_keys
from tests.lab.mirror import source_settings

mirror = os.environ["PIPER_MIRROR_URL"]
extra = json.load(open(os.environ["PIPER_SANDBOX_DATA"])) if os.environ.get("PIPER_SANDBOX_DATA") else {}

sandbox_ssh = [
    (
        "127.0.0.1",
        {
            "ssh_port": int(os.environ["PIPER_SSH_PORT"]),
            "ssh_user": os.environ["PIPER_SSH_USER"],
            "ssh_key": os.environ["PIPER_SSH_KEY"],
            "ssh_strict_host_key_checking": "no",
            "ssh_known_hosts_file": "/dev/null",
            "_sudo": True,  # the SSH user is not root: privileged steps go through sudo
            # the lab writes settings by field name (tests/lab/sandbox.py); as pyinfra data: piper_gpu_*
            **data_keys({"allow_no_gpu": True, **source_settings(mirror), **extra}),
        },
    ),
]

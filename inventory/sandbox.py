"""The test/demo sandbox: a Debian 12 root reached with pyinfra's chroot connector, provisioned
from the local mirror that scripts/demo and the tests serve on 127.0.0.1. Not for real hosts.

Environment: PIPER_SANDBOX_ROOT (the root), PIPER_MIRROR_URL (http://127.0.0.1:PORT),
PIPER_SANDBOX_DATA (JSON file of extra settings written by the lab: voice checksums, port).
"""

import json
import os

from piper_gpu.settings import data_keys
from tests.lab.mirror import source_settings

root = os.environ["PIPER_SANDBOX_ROOT"]
mirror = os.environ["PIPER_MIRROR_URL"]
extra = json.load(open(os.environ["PIPER_SANDBOX_DATA"])) if os.environ.get("PIPER_SANDBOX_DATA") else {}

sandbox = [
    (
        f"@chroot/{root}",
        {
            # No GPU on the test machines: provision anyway (allow_no_gpu), loudly; the server WARNs at start.
            # The lab writes settings by field name (tests/lab/sandbox.py); as pyinfra data: piper_gpu_*
            **data_keys({"allow_no_gpu": True, **source_settings(mirror), **extra}),
        },
    ),
]

"""Your own WSL2 machine: run the deploy on it, as you, with sudo for what needs root.

    pyinfra inventory/wsl.py deploy.py

Settings live in group_data/all.py (pin your voices' sha256 there) and here per host.
"""

import getpass

hosts = [
    (
        "@local",
        {
            "_sudo": True,
            # The service runs as you, with your ~/piper_env and ~/piper_models (the plan's paths).
            "piper_gpu_service_user": getpass.getuser(),
            "piper_gpu_create_service_user": False,
        },
    ),
]

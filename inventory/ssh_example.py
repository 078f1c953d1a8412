"""Several GPU machines over SSH (non-root user with sudo). Copy and edit.

    pyinfra inventory/ssh_example.py deploy.py --limit gpu_lab
"""

gpu_lab = [
    ("tts-01.example.internal", {"ssh_user": "deploy", "_sudo": True}),
    ("tts-02.example.internal", {"ssh_user": "deploy", "_sudo": True, "piper_gpu_port": 5006}),
]

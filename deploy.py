"""piper-gpu-deploy: the users' GPU plan for their Piper TTS service, as code.

    pyinfra inventory/wsl.py deploy.py          # add --dry to see the plan first

The deploy itself is the packaged ``piper_gpu.deploy_piper_gpu`` (piper_gpu/deploys.py: one step per
part of the plan); settings come from the inventory's ``piper_gpu_*`` data keys.
"""

from piper_gpu import deploy_piper_gpu

deploy_piper_gpu()

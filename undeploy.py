"""piper-gpu-deploy, in reverse: remove what deploy.py added.

    pyinfra inventory/wsl.py undeploy.py                        # service, venv, snippets, repo
    pyinfra inventory/wsl.py undeploy.py --data piper_gpu_undeploy_voices=true --data piper_gpu_undeploy_system=true

Reads the same settings as the deploy; a second run changes nothing (piper_gpu/deploys.py).
"""

from piper_gpu import undeploy_piper_gpu

undeploy_piper_gpu()

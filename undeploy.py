"""piper-gpu-deploy, in reverse: remove what deploy.py added.

    pyinfra inventory/wsl.py undeploy.py                                    # service, venv, snippets, repo
    pyinfra inventory/wsl.py undeploy.py --data undeploy_voices=true --data undeploy_system=true   # everything

Reads the same settings as the deploy; a second run changes nothing.
"""

from pyinfra import host

from piper_gpu.settings import settings_from
from piper_gpu.steps.preflight import inspect_host
from piper_gpu.steps.undeploy import remove_environment, remove_files, remove_service, remove_system

settings = settings_from(host.data)
target = inspect_host(settings, checks=False)  # no GPU needed to remove things

remove_service(target)  # 8. stop it; unit or control script and autostart gone
remove_files(target)  # 5-7. venv, server, logs, /etc/piper-gpu, tools (voices with undeploy_voices)
remove_environment(target)  # 2-3. linker config + ldconfig, profile, ~/.bashrc block, apt source, keyring
if settings.undeploy_system:
    remove_system(target)  # 3-4. CUDA/cuDNN packages, base packages and the user the deploy added

"""The packaged deploys: ``deploy_piper_gpu`` and ``undeploy_piper_gpu``, pyinfra ``@deploy``
functions with every setting's default as ``data_defaults`` (data keys ``piper_gpu_*``).

From another deploy::

    from piper_gpu import deploy_piper_gpu
    deploy_piper_gpu()                                   # the host's data (piper_gpu_* keys) over the defaults
    deploy_piper_gpu(_sudo=True)                         # pyinfra's global arguments pass through

Each step below is one part of the users' manual plan (README: "The plan, step by step"); each is
idempotent, so a second run changes nothing.
"""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import deploy

from piper_gpu.settings import DATA_DEFAULTS, data_key, settings_from, unprefixed_keys
from piper_gpu.steps.base import base_system
from piper_gpu.steps.cuda import apt_sources_checked, cuda_environment, cuda_repository, cuda_toolkit
from piper_gpu.steps.cudnn import cudnn, cudnn_sources, library_dirs
from piper_gpu.steps.old_server import old_server, old_server_files_kept
from piper_gpu.steps.piper import piper_venv, voices
from piper_gpu.steps.preflight import inspect_host, preflight
from piper_gpu.steps.service import piper_server, piper_service, record_settings
from piper_gpu.steps.undeploy import remove_environment, remove_files, remove_service, remove_system, restore_moved_aside


def _settings():
    """The settings from the host's data; unprefixed names another deploy may own are named once."""
    _, generic = unprefixed_keys(host.data)
    if generic:
        logger.warning(f"[{host.name}] host data has {', '.join(generic)}: piper-gpu-deploy ignores them and reads "
                       + ", ".join(data_key(n) for n in generic) + " (rename them if they were meant for it)")
    return settings_from(host.data)


@deploy("Piper TTS on the GPU", data_defaults=DATA_DEFAULTS)
def deploy_piper_gpu():
    settings = _settings()  # typed defaults + inventory/group data; version matrix checked
    target = preflight(settings)  # 1. WSL2? no Linux driver there; distro in the platform table; Python lock; driver
    settings = target.settings  # the sources and lock for this platform and its Python (platforms.py)
    base_system(target)  # curl, python3-venv, the service user
    old_server_files_kept(target)  # a copy of each of the user's files the run edits for the old server, as it is
    cuda_ops = []
    if settings.cuda.cuda_source == "apt":  # (cuda_source="pip": NVIDIA's wheels go into the venv, step 5)
        sources = cuda_repository(target)  # 2. cuda-keyring (key fingerprint checked) + apt source at the mirror
        sources += cudnn_sources(target)  # 4. the users' cuDNN local-repo installer + its keyring
        apt_sources_checked(target, sources)  # 2-4. apt-get update; stop unless every pinned package is offered
        cuda_ops.append(cuda_toolkit(target))  # 3. cuda-toolkit-12-4 (or runtime libraries only)
        cuda_ops.append(cudnn(target))  # 4. cuDNN 9.1.1 for CUDA 12: exact and held, or archive/wheel per platform
    venv_op = piper_venv(target)  # 5. piper-tts + exactly one ONNX Runtime: onnxruntime-gpu (+ CUDA wheels)
    library_ops = [op for op in [*cuda_ops, venv_op] if op is not None]
    cuda_environment(target, library_dirs(target), library_ops)  # 3. PATH for shells, ld.so.conf.d + ldconfig
    voice_ops = voices(target)  # 6. voices, sha256 verified
    server_ops = piper_server(target)  # 7. the server's settings (the server itself: a package in the venv, 5.)
    old_server(target)  # 6 of the plan (pkill): the old CPU server stopped, its autostart off, its script kept aside
    piper_service(target, [*library_ops, *voice_ops, *server_ops])  # 8. unit or profile start, proven; on change
    record_settings(target)  # what verify/ reads back: applied settings, resolved paths, installed files


@deploy("Remove Piper TTS on the GPU", data_defaults=DATA_DEFAULTS)
def undeploy_piper_gpu():
    settings = settings_from(host.data)
    target = inspect_host(settings, checks=False)  # no GPU needed to remove things
    remove_service(target)  # 8. stop it; unit or control script and autostart gone
    remove_files(target)  # 5-7. what it created: venv, server, logs, /etc/piper-gpu, tools (voices when asked)
    remove_environment(target)  # 2-3. linker config + ldconfig, profile, ~/.bashrc block, apt source, keyring
    restore_moved_aside(target)  # the old server's script and autostart, and files the deploy replaced, put back
    if settings.undeploy.undeploy_system:
        remove_system(target)  # 3-4. the CUDA/cuDNN and base packages, holds and user the deploy added

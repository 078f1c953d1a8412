"""piper-gpu-deploy: the users' GPU plan for their Piper TTS service, as code.

    pyinfra inventory/wsl.py deploy.py          # add --dry to see the plan first

Each step below is one part of the manual plan (README: "The plan, step by step"); each is
idempotent, so a second run changes nothing.
"""

from pyinfra import host

from piper_gpu.settings import settings_from
from piper_gpu.steps.cuda import apt_sources_checked, base_system, cuda_environment, cuda_repository, cuda_toolkit
from piper_gpu.steps.cudnn import cudnn, cudnn_sources, library_dirs
from piper_gpu.steps.piper import piper_venv, voices
from piper_gpu.steps.preflight import preflight
from piper_gpu.steps.service import piper_server, piper_service, record_settings

settings = settings_from(host.data)  # typed defaults + inventory/group data; version matrix checked

target = preflight(settings)  # 1. WSL2? no Linux driver there; distro in the platform table; Python lock; driver
settings = target.settings  # the sources and lock for this platform and its Python (piper_gpu/platforms.py)
base_system(target)  # curl, python3-venv, the service user
cuda_ops = []
if settings.cuda_source == "apt":  # (cuda_source="pip": NVIDIA's wheels go into the venv, step 5)
    sources = cuda_repository(target)  # 2. cuda-keyring (key fingerprint checked) + apt source at the mirror
    sources += cudnn_sources(target)  # 4. the users' cuDNN local-repo installer + its keyring (cudnn_source=local-repo)
    apt_sources_checked(target, sources)  # 2-4. apt-get update; stop unless every pinned package is offered
    cuda_ops.append(cuda_toolkit(target))  # 3. cuda-toolkit-12-4 (or runtime libraries only)
    cuda_ops.append(cudnn(target))  # 4. cuDNN 9.1.1 for CUDA 12: exact and held, or archive/wheel per platform
venv_op = piper_venv(target)  # 5. piper-tts + exactly one ONNX Runtime: onnxruntime-gpu (+ CUDA wheels)
cuda_environment(  # 3. PATH/LD_LIBRARY_PATH for shells, ld.so.conf.d + ldconfig for services
    target,
    lib_dirs=library_dirs(target),
    libraries_changed=lambda: any(op.changed for op in [*cuda_ops, venv_op] if op is not None),
)
voice_ops = voices(target)  # 6. voices, sha256 verified
server_ops = piper_server(target)  # 7. patched piper_http_server.py from its template
piper_service(  # 8. systemd unit or profile start; restarted only when an input changed
    target,
    inputs_changed=lambda: any(op.changed for op in [*cuda_ops, venv_op, *voice_ops, *server_ops] if op is not None),
)
record_settings(target)  # what verify/ reads back: the applied settings and resolved paths

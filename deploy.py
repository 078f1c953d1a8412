"""piper-gpu-deploy: the users' GPU plan for their Piper TTS service, as code.

    pyinfra inventory/wsl.py deploy.py          # add --dry to see the plan first

Each step below is one part of the manual plan (README: "The plan, step by step"); each is
idempotent, so a second run changes nothing.
"""

from pyinfra import host

from piper_gpu.settings import settings_from
from piper_gpu.steps.cuda import base_system, cuda_environment, cuda_repository, cuda_toolkit
from piper_gpu.steps.cudnn import cudnn, cudnn_lib_dirs
from piper_gpu.steps.piper import piper_venv, voices
from piper_gpu.steps.preflight import preflight
from piper_gpu.steps.service import piper_server, piper_service, record_settings

settings = settings_from(host.data)  # typed defaults + inventory/group data; version matrix checked

target = preflight(settings)  # 1. WSL2? driver new enough? distro supported? no Linux driver on WSL2
base_system(target)  # curl, python3-venv, the service user
cuda_repository(target)  # 2. cuda-keyring (key fingerprint checked) + apt source at the mirror
toolkit = cuda_toolkit(target)  # 3. cuda-toolkit-12-4 (or runtime libraries only)
cudnn_op = cudnn(target)  # 4. cuDNN 9.1.1 for CUDA 12, exact and held
cuda_environment(  # 3. PATH/LD_LIBRARY_PATH for shells, ld.so.conf.d + ldconfig for services
    target,
    extra_lib_dirs=cudnn_lib_dirs(target),
    packages_changed=lambda: toolkit.changed or cudnn_op.changed,
)
venv_op = piper_venv(target)  # 5. piper-tts + exactly one ONNX Runtime: onnxruntime-gpu
voice_ops = voices(target)  # 6. voices, sha256 verified
server_ops = piper_server(target)  # 7. patched piper_http_server.py from its template
piper_service(  # 8. systemd unit or profile start; restarted only when an input changed
    target,
    inputs_changed=lambda: any(op.changed for op in [venv_op, toolkit, cudnn_op, *voice_ops, *server_ops]),
)
record_settings(target)  # what verify/ reads back: the applied settings and resolved paths

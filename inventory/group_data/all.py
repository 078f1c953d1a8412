"""Settings for every host: pyinfra data keys piper_gpu_* (every setting, its default and what it
does: piper_gpu/settings.py and docs/settings.md).

Every voice is downloaded and checked against its sha256. Pin the digests of the voice files you
trust, or the deploy stops before changing anything: on a machine that reaches the voices' source,

    python -m piper_gpu pin-voices --voice zh_CN-huayan-medium        # prints piper_gpu_voices = [...]

and paste what it prints here.
"""

# piper_gpu_voices = [
#     {
#         "name": "zh_CN-huayan-medium",
#         "onnx_sha256": "<64 hex digits>",
#         "json_sha256": "<64 hex digits>",
#     },
# ]
# piper_gpu_port = 5005
# piper_gpu_bind_address = "auto"   # where your old CPU server listened (docs/migrate.md), else 127.0.0.1
# piper_gpu_old_server = "migrate"  # or "refuse": stop before any change when the old server is found
# piper_gpu_cuda_repo_url = "https://developer.download.nvidia.com/compute/cuda/repos"   # or your mirror
# piper_gpu_voices_base_url = "https://huggingface.co/rhasspy/piper-voices/resolve/v1.0.0"

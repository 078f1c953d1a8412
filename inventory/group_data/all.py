"""Settings for every host (names and defaults: piper_gpu/settings.py and the README).

Every voice is downloaded and checked against its sha256. Fill in the digests of the voice files
you trust (sha256sum of the .onnx and .onnx.json), or the deploy stops before changing anything.
"""

# voices = [
#     {
#         "name": "zh_CN-huayan-medium",
#         "onnx_sha256": "<64 hex digits>",
#         "json_sha256": "<64 hex digits>",
#     },
# ]
# port = 5005
# bind_address = "127.0.0.1"
# cuda_repo_url = "https://developer.download.nvidia.com/compute/cuda/repos"   # or your mirror
# voices_base_url = "https://huggingface.co/rhasspy/piper-voices/resolve/v1.0.0"

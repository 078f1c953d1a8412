"""Steps 5-6: the Piper venv with exactly one ONNX Runtime (the GPU build) and the server package
(its wheel built here, on the controller), and the voices, each file checked against its pinned sha256."""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import Directory, File
from pyinfra.operations import files, pip

from piper_gpu import server_wheel
from piper_gpu.operations import as_user, fetch, pip_debris_removed, venv_changes, venv_locked, venv_owned, venv_state
from piper_gpu.steps.base import put_file, record_created, recorded
from piper_gpu.target import ADDED_PATHS, SERVER_WHEELS, VENV_BEFORE, Target


def directories(paths: list[str], user: str) -> None:
    """Each directory present and the service user's; one the host did not have is recorded first as the
    deploy's (undeploy removes those, and in the others only the deploy's own files)."""
    for path in paths:
        if not host.get_fact(Directory, path=path):
            record_created(path)
        files.directory(name=f"Directory {path}", path=path, user=user, group=user, mode="750")


def server_package() -> server_wheel.ServerWheel:
    """The server's wheel, from server/ (built on the controller when its sources changed), copied
    to SERVER_WHEELS on the host, alone there (older builds removed)."""
    wheel = server_wheel.build()
    files.sync(
        name=f"Server wheel {wheel.filename} (built from server/) in {SERVER_WHEELS}",
        src=str(wheel.path.parent),
        dest=SERVER_WHEELS,
        delete=True,
        mode="644",
        dir_mode="755",
    )
    return wheel


@deploy("Piper venv: piper-tts + onnxruntime-gpu (CPU onnxruntime removed) + the server package")
def piper_venv(target: Target):
    s = target.settings
    user = s.service.service_user
    directories([target.piper_dir, target.run_dir, target.log_dir, target.models_dir], user)
    state = venv_state(target.venv_python, user)
    theirs = state is not None and target.venv_dir not in recorded(ADDED_PATHS)
    if state is None and not host.get_fact(Directory, path=target.venv_dir):
        record_created(target.venv_dir)
    elif theirs and not host.get_fact(File, path=VENV_BEFORE):
        files.put(name=f"Record what your venv {target.venv_dir} (made before this deploy) holds, in {VENV_BEFORE}",
                  src=StringIO("".join(f"{n}=={v}\n" for n, v in sorted(state["distributions"].items()))),
                  dest=VENV_BEFORE, mode="644")
    pip.venv(name=f"Create venv {target.venv_dir}", path=target.venv_dir, python="python3", **as_user(user))
    wheel = server_package()
    wanted = s.venv_requirements()  # the server pinned at the version of the wheel just built
    put_file(
        target,
        "Record the venv lock (requirements.lock)",
        "# Managed by piper-gpu-deploy: the venv's lock (pip install --no-deps -r)\n"
        + "".join(f"{n}=={v}\n" for n, v in sorted(wanted.items())),
        target.lock_file,
        "640",
        user=user,
        group=user,
    )
    foreign = (state or {}).get("foreign_owned") or []
    venv_owned(
        name=f"Venv files owned by {user}" + (f" ({state['foreign_owned_count']} were not, e.g. {foreign[0]}: "
                                              "a `sudo pip install`?)" if foreign else ""),
        venv_dir=target.venv_dir,
        user=user,
    )
    debris = (state or {}).get("debris") or []
    pip_debris_removed(
        name="No debris of an interrupted pip run in site-packages" + (f" (removing {', '.join(debris)})" if debris else ""),
        venv_dir=target.venv_dir,
        user=user,
    )
    changes = venv_changes(state, wanted)
    return venv_locked(
        name=f"Venv holds piper-tts {s.venv.piper_tts_version}, only onnxruntime-gpu {s.venv.onnxruntime_gpu_version}"
             f" and {server_wheel.DIST} {wheel.version}"
             + (f": {changes.describe()}" if changes else "")
             + (f" (in your venv, made before this deploy: what it held is in {VENV_BEFORE})" if changes and theirs else ""),
        venv_dir=target.venv_dir,
        wanted=wanted,
        pip_args=[*s.pip_source_args(), "--find-links", SERVER_WHEELS],
        owner=user,
        **as_user(user),
    )


@deploy("Voices (sha256 verified)")
def voices(target: Target):
    s = target.settings
    changed = []
    for voice in s.models.voices:
        vdir = target.voice_dir(voice)
        user = s.service.service_user
        directories([vdir.rsplit("/", 1)[0], vdir], user)
        for suffix, digest in ((".onnx", voice.onnx_sha256), (".onnx.json", voice.json_sha256)):
            changed.append(
                fetch(
                    name=f"Voice {voice.name}{suffix} (sha256 {digest[:12]}...)",
                    src=s.voice_url(voice, suffix),
                    dest=f"{vdir}/{voice.name}{suffix}",
                    sha256=digest,
                    user=s.service.service_user,
                    group=s.service.service_user,
                    mode="640",
                )
            )
    return changed

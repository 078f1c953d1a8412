"""Every setting that becomes a path or a name on the host is checked when the settings are read
(piper_gpu/host_names.py): a bad value is refused before anything changes, naming the setting, the value
and the fix. A table of the cases operators write, and properties over arbitrary text."""

import posixpath
import string

import pytest
from hypothesis import example, given, settings as hsettings, strategies as st

from piper_gpu import host_names
from piper_gpu.settings import SettingsError, from_fields

SHA = "a" * 64


def make(**values):
    voices = values.pop("voices", [{"name": "en_US-joe-medium", "onnx_sha256": SHA, "json_sha256": SHA}])
    return from_fields({"voices": voices, **values})


@pytest.mark.parametrize("setting,value,message", [
    ("piper_dir", "piper_env", "piper_dir='piper_env' is relative"),
    ("venv_dir", "./venv", "venv_dir='./venv' is relative"),
    ("models_dir", "~piper/models", "models_dir='~piper/models' is relative"),
    ("piper_dir", "~/piper_env/../other", "has a '..', '.' or empty component"),
    ("venv_dir", "/srv//venv", "has a '..', '.' or empty component"),
    ("piper_dir", "/", "has a '..', '.' or empty component"),
    ("piper_dir", "~/", "has a '..', '.' or empty component"),
    ("models_dir", "~/my models", "has characters the deploy does not write into unit files"),
    ("piper_dir", "/srv/piper;rm", "(';')"),
    ("piper_dir", "/usr/local", "piper_dir='/usr/local' is a directory of the system"),
    ("models_dir", "/opt/", "is a directory of the system"),
    ("venv_dir", "/home", "is a directory of the system"),
    ("service_user", "Bad User", "service_user='Bad User' is not a valid user name"),
    ("service_user", "-piper", "is not a valid user name"),
    ("service_user", "1234", "is not a valid user name"),
    ("service_user", "a" * 33, "is not a valid user name"),
    ("bind_address", "localhost", "bind_address='localhost': use 'auto', or an IP address"),
    ("cuda_version", "12.4/../..", "cuda_version='12.4/../..' is not MAJOR.MINOR"),
    ("cudnn_version", "9.1", "cudnn_version='9.1' is not NVIDIA's full release"),
    ("cuda_keyring_version", "1.1-1/../x", "cuda_keyring_version='1.1-1/../x' is not a Debian version"),
    ("cuda_repo_path", "../ubuntu2204", "cuda_repo_path='../ubuntu2204' is not a repository folder name"),
    ("old_server", "kill", "old_server='kill': use 'migrate'"),
    ("old_server_scripts", ["relative/piper_http_server.py"], "is not an absolute path or ~/..."),
    ("old_server_scripts", ["/srv/../piper_http_server.py"], "must name one file"),
])
def test_a_bad_value_is_refused_naming_setting_value_and_fix(setting, value, message):
    with pytest.raises(SettingsError) as exc:
        make(**{setting: value})
    assert message in str(exc.value)


@pytest.mark.parametrize("voice,message", [
    ({"name": "../../etc/evil"}, "voice name='../../etc/evil' is not a single file or folder name"),
    ({"name": "zh_CN-huayan-medium", "lang": "zh/../../"}, "voice zh_CN-huayan-medium: lang='zh/../../'"),
    ({"name": "a/b", "url": "https://example.org/v"}, "voice name='a/b' is not a single file or folder name"),
    ({"name": ".."}, "voice name='..' is not a single"),
])
def test_a_voice_name_or_language_that_is_not_one_path_component_is_refused(voice, message):
    with pytest.raises(SettingsError) as exc:
        make(voices=[{**voice, "onnx_sha256": SHA, "json_sha256": SHA}])
    assert message in str(exc.value)


@pytest.mark.parametrize("values", [
    {"piper_dir": "/srv/piper", "venv_dir": "/srv/piper/.venv", "models_dir": "/srv/voices"},
    {"piper_dir": "~/piper_env", "venv_dir": "~/piper_env/.venv", "models_dir": "~/piper_models/"},
    {"service_user": "dev.user-1"}, {"service_user": "build$"}, {"service_user": "_piper"},
    {"bind_address": "0.0.0.0"}, {"bind_address": "::"}, {"bind_address": "192.168.1.20"},
    {"cuda_repo_path": "ubuntu2204"}, {"cuda_keyring_version": "1.1-1"},
    {"old_server_scripts": ["~/tts/piper_http_server.py", "/mnt/c/Users/Jo Doe/tts/server (2).py"]},
    {"old_server": "refuse"},
])
def test_what_operators_write_is_accepted(values):
    make(**values)


def test_old_server_scripts_from_the_command_line():
    assert make(old_server_scripts='["~/a.py", "/b c.py"]').migration.old_server_scripts == ("~/a.py", "/b c.py")
    assert make(old_server_scripts="~/a.py,/b.py").migration.old_server_scripts == ("~/a.py", "/b.py")


# --- properties --------------------------------------------------------------------------------
DIR_SETTINGS = ("piper_dir", "venv_dir", "models_dir")


@hsettings(max_examples=300, deadline=None)
@given(value=st.text(max_size=40), setting=st.sampled_from(DIR_SETTINGS))
def test_a_directory_setting_is_accepted_exactly_when_it_names_one_place(value, setting):
    """Accepted: absolute or ~/..., every component a real name of safe characters; then the path the
    deploy makes of it (``~`` expanded) normalises to itself, stays under the home or /, and is not the
    home or / itself. Anything else is refused with the setting and the value named, never an exception."""
    problem = host_names.host_dir_problem(setting, value)
    if problem is not None:
        assert problem.startswith(f"{setting}={value!r}")
        return
    path = "/home/dev" + value[1:] if value.startswith("~/") else value
    assert posixpath.normpath(path) == path.rstrip("/")
    assert path.rstrip("/") not in ("/", "/home/dev")
    assert path.startswith("/home/dev/") or not value.startswith("~")
    assert path.rstrip("/") not in host_names.SYSTEM_DIRS
    assert set(value) <= set(string.ascii_letters + string.digits + "._+@/-~")


@hsettings(max_examples=300, deadline=None)
@given(value=st.text(max_size=40))
def test_a_voice_name_is_accepted_exactly_when_it_is_one_path_component(value):
    problem = host_names.component_problem("voice name", value)
    if problem is None:
        assert "/" not in value and value not in (".", "..") and posixpath.basename(value) == value and value
        assert posixpath.normpath(posixpath.join("/models", value)) == "/models/" + value
    else:
        assert problem.startswith(f"voice name={value!r}")


@hsettings(max_examples=300, deadline=None)
@given(value=st.text(st.sampled_from(string.ascii_letters + string.digits + "_.-$ /:é"), max_size=40)
       | st.text(max_size=40))
@example("$")
@example("a$")
@example("a$b")
def test_a_user_name_is_accepted_exactly_as_useradd_would(value):
    problem = host_names.user_name_problem("service_user", value)
    core = value[:-1] if value.endswith("$") else value
    ok = (bool(core) and len(value) <= 32 and core[0] != "-" and not value.isdigit() and value not in (".", "..")
          and all(c in string.ascii_letters + string.digits + "_.-" for c in core))
    assert (problem is None) == ok, (value, problem)


@hsettings(max_examples=200, deadline=None)
@given(value=st.text(max_size=40))
def test_a_script_path_is_refused_with_its_setting_or_names_one_file(value):
    problem = host_names.script_path_problem("old_server_scripts", value)
    if problem is None:
        assert value.startswith(("/", "~/")) and ".." not in value.split("/") and "\n" not in value
    else:
        assert problem.startswith("old_server_scripts: ")

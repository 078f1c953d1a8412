"""The settings that name a file, a directory or a URL (piper_gpu/sources.py): their forms checked
when the settings are read, Windows paths converted the way wslpath does, local files named on the
host as they are. A table of the forms operators write, then properties over arbitrary names."""

import string
from pathlib import PurePosixPath

import pytest
from hypothesis import example, given, settings as hsettings, strategies as st

from piper_gpu import naming, platforms, sources
from piper_gpu.settings import SettingsError, from_fields
from piper_gpu.steps.preflight import PreflightError, check_local_sources
from tests.unit.test_settings import VOICES

INSTALLER = "cudnn-local-repo-ubuntu2204-9.1.1_1.0-1_amd64.deb"
DIGEST = "a" * 64
WSL2 = platforms.by_key("wsl2-ubuntu2204")


def local_repo(url: str, **more):
    return from_fields({"voices": VOICES, "cudnn_source": "local-repo", "cudnn_local_repo_url": url,
                        "cudnn_local_repo_sha256": DIGEST, **more})


@pytest.mark.parametrize("written,on_host", [
    # the issue's own value, as Explorer's "Copy as path" gives it (without its quotes)
    (rf"C:\Users\dev\Downloads\{INSTALLER}", f"/mnt/c/Users/dev/Downloads/{INSTALLER}"),
    (rf"c:\Users\dev\Downloads\{INSTALLER}", f"/mnt/c/Users/dev/Downloads/{INSTALLER}"),
    (f"D:/Installers/{INSTALLER}", f"/mnt/d/Installers/{INSTALLER}"),
    (rf"C:\Users\Dév Ünïcode\下载\My Files (2) #1 & 100%\{INSTALLER}",
     f"/mnt/c/Users/Dév Ünïcode/下载/My Files (2) #1 & 100%/{INSTALLER}"),
    (rf"\\wsl$\Ubuntu-22.04\home\dev\{INSTALLER}", f"/home/dev/{INSTALLER}"),
    (rf"\\wsl.localhost\Ubuntu\tmp\{INSTALLER}", f"/tmp/{INSTALLER}"),
    (f"/mnt/c/Users/dev/Downloads/{INSTALLER}", f"/mnt/c/Users/dev/Downloads/{INSTALLER}"),
    (f"file:///srv/My%20Files/{INSTALLER}", f"/srv/My Files/{INSTALLER}"),
    (f"file://localhost/srv/{INSTALLER}", f"/srv/{INSTALLER}"),
    (f"https://mirror.example/cudnn/{INSTALLER}", f"https://mirror.example/cudnn/{INSTALLER}"),
])
def test_every_form_an_operator_writes_reaches_the_host_as_its_path(written, on_host):
    s = local_repo(written)  # accepted when the settings are read
    resolved = s.for_host(WSL2, "3.10")
    assert resolved.sources.cudnn_local_repo_url == on_host
    assert naming.file_name(written) == INSTALLER
    local = resolved.local_sources()
    assert local.get("cudnn_local_repo_url") == (None if on_host.startswith("https:") else (on_host, "file"))


def test_the_automount_root_of_wsl_conf_is_honoured():
    conf = "[boot]\nsystemd=true\n\n# moved drives\n[automount]\nenabled = true\nroot = /win  # comment\n"
    assert sources.automount_root(conf) == "/win/"
    assert sources.automount_root('[automount]\nroot = "/drives/"\n') == "/drives/"
    assert sources.automount_root("[interop]\nroot=/x\n") == sources.DEFAULT_AUTOMOUNT_ROOT
    resolved = local_repo(rf"C:\Users\dev\{INSTALLER}").for_host(WSL2, "3.10", sources.automount_root(conf))
    assert resolved.sources.cudnn_local_repo_url == f"/win/c/Users/dev/{INSTALLER}"


@pytest.mark.parametrize("setting,value,message", [
    ("cudnn_local_repo_url", f"Downloads/{INSTALLER}", "is a relative path"),
    ("cudnn_local_repo_url", f'"C:\\Users\\dev\\{INSTALLER}"', "is a relative path"),  # quotes left on
    ("cudnn_local_repo_url", rf"\\fileserver\share\{INSTALLER}", "is a network share"),
    ("cudnn_local_repo_url", f"https://mirror.example/My Files/{INSTALLER}", "cannot hold spaces"),
    ("cudnn_local_repo_url", f"https:///{INSTALLER}", "has no host name"),
    ("cudnn_local_repo_url", f"ftp://mirror.example/{INSTALLER}", "use https://, http:// or file://"),
    ("cudnn_local_repo_url", f"file://otherhost/{INSTALLER}", "not a file URL of this host"),
    ("cudnn_local_repo_url", f"/mnt/c/Users/dev/{INSTALLER}\n", "control character U+000A"),
    ("cudnn_local_repo_url", f" /mnt/c/{INSTALLER}", "starts or ends with a space"),
    ("cuda_repo_url", "/srv/mirror/cuda", "is not a URL"),
    ("pip_index_url", r"C:\wheels", "is not a URL"),
    ("pip_find_links", "wheels/", "is a relative path"),
])
def test_a_bad_source_is_refused_when_the_settings_are_read_naming_setting_value_and_fix(setting, value, message):
    with pytest.raises(SettingsError) as err:
        local_repo(f"/srv/{INSTALLER}", **{setting: value})
    text = str(err.value)
    assert f"{setting}={value!r}" in text and message in text, text


def test_a_missing_or_unreadable_local_source_stops_preflight_naming_both_forms():
    given = local_repo(rf"C:\Users\dev\Downloads\{INSTALLER}", pip_find_links="/srv/wheels")
    resolved = given.for_host(WSL2, "3.10")
    wanted = resolved.local_sources()
    assert list(wanted) == ["cudnn_local_repo_url", "pip_find_links"]
    check_local_sources(["file", "dir"], wanted, given)  # both there: nothing to say
    with pytest.raises(PreflightError) as err:
        check_local_sources(["missing", "unreadable"], wanted, given)
    text = str(err.value)
    assert "nothing was changed" in text
    assert (f"cudnn_local_repo_url={given.sources.cudnn_local_repo_url!r} (on this host /mnt/c/Users/dev/Downloads/"
            f"{INSTALLER}): no such file") in text and "Copy as path" in text
    assert "pip_find_links='/srv/wheels': not readable; make it readable (chmod a+r /srv/wheels)" in text
    with pytest.raises(PreflightError, match="a dir, not a file; give the file itself"):
        check_local_sources(["dir", "dir"], wanted, given)


def test_a_bundle_at_a_path_with_spaces_gives_percent_encoded_urls():
    s = from_fields({"voices": VOICES, "bundle_url": "/srv/piper bundle #2/", "cudnn_source": "local-repo",
                     "cudnn_local_repo_url": f"/home/dev/My Files/{INSTALLER}", "cudnn_local_repo_sha256": DIGEST})
    assert s.sources.bundle_url == "file:///srv/piper%20bundle%20%232/"
    assert s.sources.cudnn_local_repo_url == f"file:///srv/piper%20bundle%20%232/cudnn/{INSTALLER}"
    assert sources.local_path(s.sources.cudnn_local_repo_url) == f"/srv/piper bundle #2/cudnn/{INSTALLER}"


# --- properties --------------------------------------------------------------------------
#: characters Windows allows in a file or folder name (not <>:"/\|?* nor control characters)
WINDOWS_NAME_CHARS = st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters='<>:"/\\|?*')
windows_names = st.text(WINDOWS_NAME_CHARS, min_size=1, max_size=40).filter(
    lambda n: n.strip(" .") == n and n not in (".", ".."))  # Windows drops trailing dots and spaces


@hsettings(max_examples=300, deadline=None)
@given(drive=st.sampled_from(string.ascii_letters), folders=st.lists(windows_names, max_size=5), name=windows_names,
       slashes=st.sampled_from(["\\", "/"]))
def test_any_windows_path_is_accepted_and_converted_like_wslpath(drive, folders, name, slashes):
    written = f"{drive}:" + "".join(slashes + f for f in folders) + slashes + name
    s = local_repo(written)
    on_host = s.for_host(WSL2, "3.10").sources.cudnn_local_repo_url
    assert on_host == "/mnt/" + drive.lower() + "".join("/" + f for f in folders) + "/" + name
    assert naming.file_name(written) == name == PurePosixPath(on_host).name


#: any name a POSIX file system takes (no NUL or "/"), control characters included
posix_names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"), min_size=1,
                      max_size=30).filter(lambda n: n not in (".", ".."))


@hsettings(max_examples=300, deadline=None)
@given(folders=st.lists(posix_names, max_size=4), name=posix_names)
@example(folders=[], name="\\0")  # "/\\0" is a POSIX path, not a share (found by this test)
def test_a_path_is_accepted_exactly_when_it_is_usable_and_its_file_url_names_the_same_file(folders, name):
    path = "/" + "/".join([*folders, name])
    problem = sources.problem("cudnn_deb_url", path, "file")
    has_control = any(ord(c) < 0x20 or ord(c) == 0x7F for c in path)
    assert (problem is not None) == (has_control or path != path.strip(" ")), (path, problem)
    if problem:
        assert problem.startswith(f"cudnn_deb_url={path!r}")
        return
    assert sources.local_path(path) == path
    url = PurePosixPath(path).as_uri()
    assert sources.problem("cudnn_deb_url", url, "file") is None
    assert sources.local_path(url) == path  # a file:// URL is decoded back to the very path


@hsettings(max_examples=200, deadline=None)
@given(value=st.text(max_size=60))
def test_any_text_is_either_a_usable_source_or_refused_with_its_setting_never_an_exception(value):
    for setting, kind in sources.SOURCE_SETTINGS.items():
        problem = sources.problem(setting, value, kind)
        if problem is None:
            assert value.lower().startswith(("http://", "https://", "file:")) or (
                kind != "url" and (value.startswith("/") or sources.is_windows_path(value))), value
        else:
            assert problem.startswith(f"{setting}={value!r}"), problem

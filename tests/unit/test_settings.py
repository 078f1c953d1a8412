"""Settings and the version matrix: pure logic, no host."""

import dataclasses
import json

import pytest

from piper_gpu import derived
from piper_gpu.inputs import GROUPS, Checks, Cuda, Service, Sources, Venv, Voices
from piper_gpu.settings import (DATA_DEFAULTS, FIELD_GROUPS, Settings, SettingsError, Voice, from_fields, settings_from,
                                settings_from_json, unprefixed_keys)

SHA = "a" * 64
VOICES = [{"name": "zh_CN-huayan-medium", "onnx_sha256": SHA, "json_sha256": SHA}]


def make(**overrides):
    return from_fields({"voices": VOICES, **overrides})


def test_defaults_are_the_users_plan():
    s = make()
    assert (s.cuda.cuda_version, s.cuda.cudnn_version, s.cudnn_built_for) == ("12.4", "9.1.1.17", "12.4")
    assert s.cuda_packages == ["cuda-toolkit-12-4"]
    assert s.cudnn_package == "libcudnn9-cuda-12" and s.cudnn_apt_version == "9.1.1.17-1"
    assert s.venv.onnxruntime_gpu_version == "1.20.2"
    assert (s.venv.venv_dir, s.models.models_dir, s.service.port, s.service.bind_address) == (
        "~/piper_env/.venv", "~/piper_models", 5005, "auto")
    assert s.cuda_lib_dir() == "/usr/local/cuda-12.4/targets/x86_64-linux/lib"


def test_runtime_only_installs_cuda_libraries():
    assert make(cuda_install="runtime").cuda_packages == ["cuda-libraries-12-4"]


def test_cuda13_onnxruntime_with_cuda_12_4_is_rejected_naming_both():
    with pytest.raises(SettingsError) as err:
        make(onnxruntime_gpu_version="1.31.1")
    assert "onnxruntime-gpu 1.31.1 is built for CUDA 13" in str(err.value)
    assert "cuda_version is 12.4" in str(err.value)


def test_cudnn_built_for_12_9_with_toolkit_12_4_is_rejected():
    with pytest.raises(SettingsError) as err:
        make(cudnn_version="9.12.0.46")
    assert "cuDNN 9.12.0.46 is built for CUDA 12.9" in str(err.value)
    assert "12.4" in str(err.value)


@pytest.mark.parametrize("release", ["1.18.0", "1.18.1"])
def test_pypi_1_18_is_a_cuda_11_build_and_is_rejected(release):
    # The PyPI 1.18.x wheels' CUDA provider links libcublasLt.so.11 and libcudnn.so.8.
    with pytest.raises(SettingsError, match=f"onnxruntime-gpu {release} is built for CUDA 11"):
        make(onnxruntime_gpu_version=release)


def test_unknown_onnxruntime_release_is_rejected_with_the_fix():
    with pytest.raises(SettingsError, match="not in the version matrix"):
        make(onnxruntime_gpu_version="1.26.0")


def test_cudnn_release_not_in_matrix_needs_its_cuda_target():
    with pytest.raises(SettingsError, match="set piper_gpu_cudnn_cuda_version"):
        make(cudnn_version="9.3.0.75")
    assert make(cudnn_version="9.3.0.75", cudnn_cuda_version="12.4").cudnn_built_for == "12.4"


def test_cuda13_toolkit_with_cuda13_onnxruntime_is_accepted():
    s = make(cuda_version="13.0", onnxruntime_gpu_version="1.31.1", cudnn_version="9.12.0.46", cudnn_cuda_version="13.0")
    assert s.cuda_packages == ["cuda-toolkit-13-0"] and s.cudnn_package == "libcudnn9-cuda-13"


def test_unpinned_voice_checksum_stops_the_deploy_with_the_fix():
    with pytest.raises(SettingsError) as err:
        from_fields({})
    msg = str(err.value)
    assert "zh_CN-huayan-medium: onnx_sha256 is not pinned" in msg
    assert "huggingface.co/rhasspy/piper-voices/resolve/v1.0.0/zh/zh_CN/huayan/medium/zh_CN-huayan-medium.onnx" in msg


def test_bad_values_are_all_reported_at_once():
    with pytest.raises(SettingsError) as err:
        make(cuda_install="everything", service_mode="docker", port=70000)
    msg = str(err.value)
    assert "cuda_install='everything'" in msg and "service_mode='docker'" in msg and "port=70000" in msg


def test_data_strings_from_the_cli_are_coerced():
    s = make(port="6006", allow_no_gpu="true", min_speedup="3")
    assert (s.service.port, s.checks.allow_no_gpu, s.checks.min_speedup) == (6006, True, 3.0)
    with pytest.raises(SettingsError, match="not a boolean"):
        make(use_gpu="maybe")


def test_local_sources_need_their_checksums():
    with pytest.raises(SettingsError, match="cudnn_deb_url and cudnn_deb_sha256"):
        make(cudnn_source="local-deb")
    with pytest.raises(SettingsError, match="cudnn_local_repo_url .* and cudnn_local_repo_sha256"):
        make(cudnn_source="local-repo")
    # the archive's digest comes from NVIDIA's manifest for known releases, else it must be set
    assert make(cudnn_source="archive").cudnn_archive[1] == "992b4be26899cc4c618bb1f6989261df7d0a9f9032b2217bf1fce9dd3228c904"
    with pytest.raises(SettingsError, match="no sha256 known for cudnn-linux-x86_64-9.1.0.70_cuda12-archive.tar.xz"):
        make(cudnn_source="archive", cudnn_version="9.1.0.70")


def test_voice_urls_follow_hugging_face_layout_or_explicit_url():
    s = make()
    v = s.models.voices[0]
    assert s.voice_url(v, ".onnx.json").endswith("/zh/zh_CN/huayan/medium/zh_CN-huayan-medium.onnx.json")
    assert v.language_dir == "zh"
    local = Voice(name="zh_CN-huayan-medium", url="file:///srv/voices")
    assert s.voice_url(local, ".onnx") == "file:///srv/voices/zh_CN-huayan-medium.onnx"


def test_pip_sources():
    assert make().pip_source_args() == ["--index-url", "https://pypi.org/simple"]
    assert make(pip_no_index=True, pip_find_links="http://127.0.0.1:1/pypi/").pip_source_args() == [
        "--no-index", "--find-links", "http://127.0.0.1:1/pypi/"]


def test_lock_holds_piper_and_the_gpu_runtime_only():
    reqs = make().python_requirements()
    assert reqs["piper-tts"] == "1.8.0" and reqs["onnxruntime-gpu"] == "1.20.2"
    assert "onnxruntime" not in reqs


def test_json_round_trip_is_what_verify_reads():
    s = make(port=6006)
    again = settings_from_json(s.to_json())
    assert again == s
    assert json.loads(s.to_json())["voices"][0]["name"] == "zh_CN-huayan-medium"


#: Python types of the annotations Settings uses (a new kind of annotation fails the test below)
ANNOTATED = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,), "str | None": (str, type(None)),
             "dict[str, str]": (dict,), "tuple[Voice, ...]": (tuple,), "tuple[str, ...]": (tuple,)}


def test_every_default_has_its_annotated_type():
    """The defaults are what an inventory that sets nothing gets: each must be of its field's type
    (an int default for a bool field, or a string for a number, would pass every check of the
    value and then be written into server.toml as the wrong TOML type)."""
    fields = [(f, getattr(cls(), f.name)) for _, cls in GROUPS for f in dataclasses.fields(cls)]
    wrong = [(f.name, f.type, value) for f, value in fields
             if not isinstance(value, ANNOTATED[f.type]) or (f.type in ("int", "float") and isinstance(value, bool))]
    assert not wrong, wrong


def test_cuda_options_must_be_key_value_pairs():
    assert make(cuda_options="cudnn_conv_algo_search=DEFAULT").service.cuda_options == "cudnn_conv_algo_search=DEFAULT"
    with pytest.raises(SettingsError, match="cuda_options='DEFAULT' must be \"key=value,key=value\""):
        make(cuda_options="DEFAULT")


def test_api_key_is_validated_and_never_recorded():
    with pytest.raises(SettingsError, match="api_key must be at least 16 characters"):
        make(api_key="short")
    s = make(api_key="x" * 24, max_pending="3")
    assert s.service.max_pending == 3
    assert json.loads(s.to_json())["api_key"] is None  # /etc/piper-gpu/settings.json holds no secret


def test_pip_cuda_source_puts_nvidia_wheels_in_the_lock():
    s = make(**{"cuda_source": "pip"})
    reqs = s.python_requirements()
    assert reqs["nvidia-cublas-cu12"] == "12.4.5.8" and reqs["nvidia-cuda-runtime-cu12"] == "12.4.127"
    assert reqs["nvidia-cudnn-cu12"] == "9.1.1.17"
    assert "nvidia-cudnn-cu12" not in make().python_requirements()


def test_pip_cuda_source_rejects_apt_only_cudnn_sources_and_foreign_wheels():
    with pytest.raises(SettingsError) as err:
        make(**{"cuda_source": "pip", "cudnn_source": "archive", "cudnn_archive_url": "file:///x",
                       "cudnn_archive_sha256": "0" * 64, "cuda_wheels": {"nvidia-cuda-runtime-cu12": "12.6.77",
                                                                         "nvidia-cublas-cu11": "11.11.3.6"}})
    msg = str(err.value)
    assert "cudnn_source='archive' applies to cuda_source='apt'" in msg
    assert "nvidia-cuda-runtime-cu12==12.6.77, not a CUDA 12.4 release" in msg
    assert "['nvidia-cublas-cu11'] are not CUDA 12 wheels" in msg
    with pytest.raises(SettingsError, match="cuda_source='conda': use 'auto', 'apt' or 'pip'"):
        make(**{"cuda_source": "conda"})


def test_bundle_url_replaces_every_source():
    s = make(**{"bundle_url": "file:///srv/piper-bundle/", "cuda_repo_url": "https://example/cuda",
                       "pip_index_url": "https://example/simple", "cudnn_source": "local-deb",
                       "cudnn_deb_url": "https://example/x/libcudnn9-cuda-12_9.1.1.17-1_amd64.deb",
                       "cudnn_deb_sha256": "1" * 64})
    assert s.sources.cuda_repo_url == "file:///srv/piper-bundle/cuda/repos"
    assert s.pip_source_args() == ["--no-index", "--find-links", "file:///srv/piper-bundle/pypi/"]
    assert s.voice_url(s.models.voices[0], ".onnx") == (
        "file:///srv/piper-bundle/voices/zh_CN-huayan-medium/zh_CN-huayan-medium.onnx")
    assert s.sources.cudnn_deb_url == "file:///srv/piper-bundle/cudnn/libcudnn9-cuda-12_9.1.1.17-1_amd64.deb"
    assert s.sources.cudnn_deb_sha256 == "1" * 64  # checksums stay the operator's pins


def test_cudnn_9_1_0_is_in_the_matrix_for_12_4():
    assert make(**{"cudnn_version": "9.1.0.70"}).cudnn_built_for == "12.4"


def test_data_keys_are_prefixed_and_old_names_are_refused_naming_the_new_ones():
    data = {"piper_gpu_voices": VOICES, "piper_gpu_port": 6006}
    assert settings_from(data).service.port == 6006
    with pytest.raises(SettingsError, match="cuda_version -> piper_gpu_cuda_version.*voices_base_url -> "
                                            "piper_gpu_voices_base_url"):
        settings_from({**data, "cuda_version": "12.4", "voices_base_url": "http://mirror"})


def test_generic_unprefixed_names_belong_to_other_deploys_and_are_left_alone():
    s = settings_from({"piper_gpu_voices": VOICES, "port": 8080, "api_key": "another deploy's secret"})
    assert (s.service.port, s.service.api_key) == (5005, None)
    assert unprefixed_keys({"port": 8080, "onnxruntime_gpu_version": "1.20.1"}) == (["onnxruntime_gpu_version"], ["port"])


def test_data_defaults_hold_every_setting_under_its_key():
    """What pyinfra's @deploy(data_defaults=) gets: every setting under piper_gpu_<its name> and no
    other key, read back (as group data is read) as the defaults; a changed key is read back changed."""
    assert DATA_DEFAULTS["piper_gpu_cuda_version"] == "12.4"
    assert DATA_DEFAULTS["piper_gpu_onnxruntime_gpu_version"] == "1.20.2"
    # python_version is the target's, found by preflight: no data key sets it
    assert set(DATA_DEFAULTS) == {"piper_gpu_" + name for name in Settings().values()} - {"piper_gpu_python_version"}
    assert settings_from(DATA_DEFAULTS, validate=False) == Settings()
    assert settings_from({**DATA_DEFAULTS, "piper_gpu_port": 6007}, validate=False).service.port == 6007


def test_shape_stable_and_its_buckets_are_validated():
    s = make(shape_stable="on", phoneme_buckets="64, 128", frame_buckets="256,512")
    service = s.service
    assert (service.shape_stable, service.phoneme_buckets, service.frame_buckets) == ("on", "64, 128", "256,512")
    assert make().service.shape_stable == "auto" and make().service.phoneme_buckets == ""
    with pytest.raises(SettingsError, match="shape_stable='yes': use 'auto'"):
        make(shape_stable="yes")
    for bad in ("64,,128", "0", "-64", "64;128", "big"):
        with pytest.raises(SettingsError, match=f"phoneme_buckets={bad!r} must be"):
            make(phoneme_buckets=bad)
    with pytest.raises(SettingsError, match="frame_buckets=512 must be"):
        make(frame_buckets=512)


@pytest.mark.parametrize("key", ["", " " * 24, "\n" * 20, " " + "k" * 20, "k" * 20 + "\n"])
def test_the_deploy_refuses_an_empty_or_blank_api_key(key):
    """Never an empty key file: the server would refuse to start (it fails closed), so the deploy stops first."""
    with pytest.raises(SettingsError, match="api_key must be at least 16 characters, without leading or trailing"):
        make(api_key=key)


def test_each_group_validates_on_its_own():
    """Each group of inputs checks its own values, without the others (and its defaults pass)."""
    for _, cls in GROUPS:
        if cls is not Voices:  # the default voice is not pinned: below
            assert cls().validate() == cls()
    with pytest.raises(SettingsError, match="cuda_install='everything': use 'auto', 'toolkit', 'compiler' or 'runtime'"):
        Cuda(cuda_install="everything").validate()
    assert any("cuda_source='pip'" in p for p in Cuda(cuda_source="pip", cudnn_source="repo").problems())
    with pytest.raises(SettingsError, match="port=70000 is not a TCP port"):
        Service(port=70000).validate()
    with pytest.raises(SettingsError, match="cuda_repo_url='ftp://mirror' is not a URL|use https://"):
        Sources(cuda_repo_url="ftp://mirror").validate()
    with pytest.raises(SettingsError, match="zh_CN-huayan-medium: onnx_sha256 is not pinned"):
        Voices().validate()
    assert Voices(voices=(Voice(**VOICES[0]),)).validate().voices[0].onnx_sha256 == SHA
    with pytest.raises(SettingsError, match="voices: duplicate names"):
        Voices(voices=(Voice(**VOICES[0]), Voice(**VOICES[0]))).validate()
    with pytest.raises(SettingsError, match="min_speedup must be positive"):
        Checks(min_speedup=0).validate()


def test_checks_between_groups_are_the_settings_own():
    """A cuDNN source needs its files (CUDA and sources), onnxruntime must fit CUDA (venv and CUDA):
    each group alone is fine, the composition is not."""
    cuda = Cuda(cudnn_source="local-deb")
    assert cuda.problems() == [] and Sources().problems() == []
    with pytest.raises(SettingsError, match="cudnn_deb_url and cudnn_deb_sha256"):
        Settings(cuda=cuda, models=Voices(voices=(Voice(**VOICES[0]),))).validate()
    assert Venv(onnxruntime_gpu_version="1.31.1").problems() == []
    with pytest.raises(SettingsError, match="onnxruntime-gpu 1.31.1 is built for CUDA 13"):
        make(onnxruntime_gpu_version="1.31.1")


def test_derived_values_come_from_the_groups():
    cuda = Cuda(cuda_version="13.0", cudnn_version="9.12.0.46", cuda_install="runtime")
    assert derived.cuda_packages(cuda) == ["cuda-libraries-13-0"]
    assert (derived.cudnn_package(cuda), derived.cudnn_wheel(cuda), derived.cuda_major(cuda)) == (
        "libcudnn9-cuda-13", "nvidia-cudnn-cu13", 13)
    assert derived.cuda_wheel_requirements(Cuda()) == {}
    assert derived.cuda_wheel_requirements(Cuda(cudnn_source="wheel")) == {"nvidia-cudnn-cu12": "9.1.1.17"}
    assert derived.pip_source_args(Sources(pip_no_index=True, pip_find_links="/srv/w")) == [
        "--no-index", "--find-links", "/srv/w"]
    url, digest = derived.cudnn_archive(Cuda(), Sources(cudnn_redist_url="https://mirror/redist/"))
    assert url == "https://mirror/redist/cudnn/linux-x86_64/cudnn-linux-x86_64-9.1.1.17_cuda12-archive.tar.xz"
    assert digest == "992b4be26899cc4c618bb1f6989261df7d0a9f9032b2217bf1fce9dd3228c904"
    reqs = derived.python_requirements(Venv(piper_tts_version="1.3.0"), Cuda(cuda_source="pip"))
    assert reqs["piper-tts"] == "1.3.0" and reqs["nvidia-cudnn-cu12"] == "9.1.1.17"
    # the composed settings give the same
    s = Settings(cuda=cuda)
    assert (s.cuda_packages, s.cudnn_package) == (derived.cuda_packages(cuda), derived.cudnn_package(cuda))


def test_every_setting_is_in_one_group_and_replace_finds_it():
    assert len(FIELD_GROUPS) == sum(len(dataclasses.fields(cls)) for _, cls in GROUPS)
    s = Settings().replace(port=6006, cudnn_source="wheel", voices_base_url="https://mirror/voices")
    assert (s.service.port, s.cuda.cudnn_source, s.models.voices_base_url) == (6006, "wheel", "https://mirror/voices")
    assert s.venv == Venv() and Settings().service.port == 5005  # the rest unchanged, the original too
    with pytest.raises(TypeError, match="no setting 'prot'"):
        Settings().replace(prot=6006)


def test_the_recorded_json_is_one_flat_object_of_every_setting():
    """/etc/piper-gpu/settings.json keeps its shape: each setting under its own name (verify reads them so)."""
    data = json.loads(make().to_json())
    assert set(data) == set(FIELD_GROUPS) | {"derived"}
    assert data["cudnn_source"] == "auto" and data["port"] == 5005 and data["cuda_wheels"]["nvidia-cublas-cu12"]


def test_the_server_settings_the_deploy_passes_on_are_the_servers_fields():
    """The deploy's Service group reads the server's fields from config.py's source (server_fields.py):
    what it read is what the server's own class holds, imported: each field's type and default (but the
    buckets, whose deploy default "" writes nothing), and the server's meaning in the deploy's."""
    from piper_gpu.inputs import NOT_WRITTEN, SERVER_SETTINGS, server_meaning
    from piper_gpu_server.config import ServerConfig

    server = {f.name: f for f in dataclasses.fields(ServerConfig)}
    service = {f.name: f for f in dataclasses.fields(Service)}
    assert set(SERVER_SETTINGS) <= set(server) and "encoder_provider" in SERVER_SETTINGS
    defaults = ServerConfig()
    for name in SERVER_SETTINGS:
        assert service[name].type == server[name].type, name
        want = NOT_WRITTEN.get(name, getattr(defaults, name))
        assert getattr(Service(), name) == want and type(getattr(Service(), name)) is type(want), name
    assert server_meaning("encoder_provider").startswith("where a shape-stable voice's encoder")
    # the deploy's own: not the server's
    assert not {"service_user", "bind_address", "service_mode", "api_key"} & set(SERVER_SETTINGS)


def test_the_source_reader_gives_names_types_literal_defaults_meanings_and_groups():
    from piper_gpu.server_fields import NOT_LITERAL, class_fields, constants

    source = '''
X = ("a", "b")
Y = len(X)


class Other:
    #: not C's
    z: int = 1


class C:
    # --- first ---
    #: one's meaning,
    #: on two lines
    one: int = 5
    two: "str | None" = None
    # --- second ------
    three: str = ",".join(X)
    four: float = 1.5
'''
    fields = class_fields(source, "C")
    assert list(fields) == ["one", "two", "three", "four"]
    assert (fields["one"].type, fields["one"].default, fields["one"].meaning, fields["one"].group) == (
        "int", 5, "one's meaning, on two lines", "first")
    assert (fields["two"].default, fields["two"].meaning) == (None, "")
    assert (fields["three"].default, fields["three"].group) == (NOT_LITERAL, "second")
    assert fields["four"].default == 1.5
    assert constants(source) == {"X": ("a", "b")}
    with pytest.raises(LookupError):
        class_fields(source, "D")


def test_the_deploy_reads_the_servers_settings_without_importing_the_server(tmp_path):
    """The controller runs pyinfra, not the server: piper_gpu.settings imports with neither
    piper_gpu_server nor numpy (which the server's config.py imports through stable.py) importable."""
    import subprocess
    import sys

    code = '''
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("piper_gpu_server", "numpy"):
            raise ImportError("not on the controller: " + name)
sys.meta_path.insert(0, Refuse())
from piper_gpu.settings import Settings
assert Settings().service.encoder_provider == "auto"
assert not any(m.split(".")[0] in ("piper_gpu_server", "numpy") for m in sys.modules)
print("ok")
'''
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_a_changed_server_default_is_the_deploys(tmp_path):
    """The deploy follows the server's source: a copy of the server whose default changed gives the
    changed default; one without a field the deploy passes on is refused naming config.py and the field."""
    import shutil

    from piper_gpu import server_fields
    from piper_gpu.resources import data_dir

    shutil.copytree(data_dir("server") / "src", tmp_path / "src")
    config = tmp_path.joinpath(*server_fields.CONFIG_MODULE)
    text = config.read_text()
    config.write_text(text.replace("max_pending: int = 8\n", "max_pending: int = 9\n"))
    assert server_fields.server_fields(tmp_path)["max_pending"].default == 9
    assert server_fields.server_constant("ENCODER_PROVIDERS", tmp_path) == ("auto", "cpu", "cuda")
    config.write_text(text.replace("class ServerConfig:", "class Renamed:"))
    with pytest.raises(RuntimeError, match=f"{config}: cannot read the server's settings class ServerConfig"):
        server_fields.server_fields(tmp_path)


def test_encoder_provider_is_validated_naming_the_setting():
    assert make().service.encoder_provider == "auto"
    assert settings_from({"piper_gpu_voices": VOICES, "piper_gpu_encoder_provider": "cuda"}).service.encoder_provider == "cuda"
    with pytest.raises(SettingsError, match="encoder_provider='gpu': use 'auto' .*'cpu' or 'cuda'"):
        make(encoder_provider="gpu")


@pytest.mark.parametrize("name", ["read_timeout", "graceful_timeout", "memory_release_idle"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_seconds_must_be_finite(name, value):
    """server.toml holds no infinity or NaN (the server refuses them): the deploy stops first."""
    with pytest.raises(SettingsError, match=f"{name} must be"):
        make(**{name: value})

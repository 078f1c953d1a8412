"""Plan step 7: the server (the piper-gpu-server package in the venv, run with its config file),
logging GPU detection."""

import checks
from conftest import health, report


def test_rendered_files_are_what_the_deploy_wrote(host, target):
    """Every file the deploy rendered (server settings, unit or control script, environment, linker
    config, profile) still has the content it wrote: a hand-edited or half-written one fails."""
    recorded = target.get("installed_files") or {}
    found = {}
    for path in sorted(recorded):
        f = host.file(path)
        found[path] = f.sha256sum if f.exists else None
    report(checks.rendered_files_problem(recorded, found, target.get("_path", "target.json")))


def test_server_package_is_the_deployed_build(service_env, target):
    """The venv imports piper_gpu_server from its own site-packages, at the version the deploy built
    from server/ (its sources' hash in the version): not an older build, not a copy elsewhere."""
    rc, found, res = service_env.python(
        "import importlib.metadata as m, json, piper_gpu_server as s; "
        "print(json.dumps({'version': m.version('piper-gpu-server'), 'file': s.__file__}))")
    report(checks.server_package_problem(rc, found, res.stderr, target["venv_dir"], target["server_version"]))


def test_server_runs_with_the_deployed_config(service_env, base_url, target):
    """The running server read the deploy's config file, and what it holds is what the deploy meant:
    a hand-edited key, or a service started by hand with other flags, fails here."""
    report(checks.server_config_problem(health(service_env, base_url), target["server_config"],
                                        target["server_config_values"]))


def test_startup_log_names_providers_and_gpu(server_log, applied, target):
    report(checks.startup_log_problem(server_log(), [v.name for v in applied.voices], applied.use_gpu,
                                      target["log_path"]))

"""--dry tells the truth: on a provisioned host with one pin changed, pyinfra's change detection
lists exactly the operations that will change, naming old and new versions, with no "conditional"
changes (every decision is made when the plan is built); and the dry run changes nothing."""

import re

import pytest

from piper_gpu.server_wheel import source_version
from tests.lab.sandbox import provision

pytestmark = [pytest.mark.e2e, pytest.mark.scenario("dry-run")]
ROW = re.compile(r"^\s+(Piper TTS on the GPU \| .+?)\s{2,}(-|\d+ \(.*?\))\s+(-|\d+ \(.*?\))\s*$")


def detected_changes(output: str) -> dict[str, tuple[str, str]]:
    """Operation (its own name, the last part) -> (change, conditional) from pyinfra's table."""
    table = output.split("--> Detected changes:", 1)[1]
    rows = {}
    for line in table.splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1).rsplit(" | ", 1)[1]] = (m.group(2), m.group(3))
    return rows


def test_dry_run_lists_exactly_what_a_changed_pin_changes(lab):
    lab.converged()
    dry = provision(lab.box, lab.mirror_url, ["--dry", "--data", "piper_gpu_piper_tts_version=1.3.0"], echo=False,
                    yes=False)
    assert dry.returncode == 0, dry.output[-4000:]
    rows = detected_changes(dry.output)
    assert len(rows) > 30, dry.output[-4000:]
    changing = sorted(name for name, (change, _) in rows.items() if change != "-")
    assert changing == sorted([
        "Record the venv lock (requirements.lock)",
        f"Venv holds piper-tts 1.3.0, only onnxruntime-gpu 1.20.2 and piper-gpu-server {source_version()}: "
        "install piper-tts==1.3.0 (was 1.8.0)",
        "Rebuild the linker cache (ldconfig): the libraries or their directories change",
        f"(Re)start piper-tts (its files change) and prove it answers http://127.0.0.1:{lab.port}/health as itself",
        "Applied settings /etc/piper-gpu/settings.json",
    ]), dry.output[-6000:]
    assert [name for name, (_, conditional) in rows.items() if conditional != "-"] == []


def test_the_dry_run_changed_nothing(lab):
    assert lab.deploy().changes == 0, lab.runs[-1].output[-3000:]

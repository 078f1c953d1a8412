"""/etc/wsl.conf edits: [boot] systemd=true set, everything else in the file kept."""

from piper_gpu.operations import ini_with_option

USERS = """# Windows drives
[automount]
enabled = true
options = "metadata,umask=22"

[boot]
command = service ssh start

[network]
hostname = gpu-box
; generateHosts = false
"""


def test_key_added_to_the_existing_section_and_nothing_else_touched():
    out = ini_with_option(USERS, "boot", "systemd", "true")
    assert out == USERS.replace("command = service ssh start\n", "command = service ssh start\nsystemd=true\n")
    assert ini_with_option(out, "boot", "systemd", "true") == out  # idempotent


def test_existing_value_replaced_in_place_keeping_its_spacing():
    text = "[boot]\nsystemd = false\ncommand=x\n"
    assert ini_with_option(text, "boot", "systemd", "true") == "[boot]\nsystemd = true\ncommand=x\n"


def test_commented_key_is_not_taken_for_the_key():
    text = "[boot]\n# systemd=false\n"
    assert ini_with_option(text, "boot", "systemd", "true") == "[boot]\n# systemd=false\nsystemd=true\n"


def test_section_appended_when_missing_and_empty_file():
    assert ini_with_option("[network]\nhostname=a\n", "boot", "systemd", "true") == \
        "[network]\nhostname=a\n\n[boot]\nsystemd=true\n"
    assert ini_with_option("", "boot", "systemd", "true") == "[boot]\nsystemd=true\n"


def test_section_names_and_keys_match_case_insensitively_and_repeats_are_all_set():
    text = "[Boot]\nSystemd=false\n[network]\nx=1\n[boot]\nsystemd=false\n"
    out = ini_with_option(text, "boot", "systemd", "true")
    assert out == "[Boot]\nsystemd=true\n[network]\nx=1\n[boot]\nsystemd=true\n"


def test_the_old_managed_block_already_satisfies_it():
    old = "[network]\nx=1\n# BEGIN piper-gpu-deploy\n[boot]\nsystemd=true\n# END piper-gpu-deploy\n"
    assert ini_with_option(old, "boot", "systemd", "true") == old

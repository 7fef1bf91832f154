"""The README stays true: its first two commands are the ones CI runs, and its flag table matches the config."""

import re
import subprocess
import sys
from dataclasses import fields

import pytest

from tests.server_process import REPO
from zoomr_sgl.config import ZoomRConfig


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    text = (REPO / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert "launch.py --enable-zoomr" in first_block[0]
    assert "pytest" in first_block[1]
    assert first_block[1] in (REPO / ".ci" / "run").read_text()


def test_flag_table_lists_every_setting_with_its_default():
    text = (REPO / "README.md").read_text()
    for f in fields(ZoomRConfig):
        flag = "--zoomr-" + f.name.replace("_", "-")
        shown = repr(f.default) if isinstance(f.default, str) else str(f.default)
        row = re.search(rf"^\| `{re.escape(flag)}` \| `(.*?)` \|", text, re.M)
        assert row, f"{flag} missing from README"
        assert row.group(1) == shown, f"{flag}: README says {row.group(1)}, config says {shown}"


def readme_http_examples() -> list[str]:
    """The shell commands of the README's "Talking to the server" block, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Talking to the server\s+```bash\n(.*?)```", text, re.S).group(1)
    commands, current = [], ""
    for line in block.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith("curl") and current:
            commands.append(current)
            current = ""
        current += ("\n" if current else "") + line
    return commands + ([current] if current else [])


@pytest.mark.server
def test_readme_http_examples_work_when_pasted(zoomr_server):
    commands = readme_http_examples()
    assert len(commands) == 4 and all(c.startswith("curl -s localhost:30000/") for c in commands), commands
    port = zoomr_server.url.rsplit(":", 1)[1]
    for command in commands:
        pasted = command.replace("localhost:30000", f"127.0.0.1:{port}").replace("python -m", f"{sys.executable} -m")
        r = subprocess.run(["bash", "-c", "set -o pipefail; " + pasted], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and r.stdout.strip(), (command, r.stdout[-500:], r.stderr[-500:])
        assert "error" not in r.stdout.lower() or "zoomr" in r.stdout, (command, r.stdout[-500:])
        if "/generate" in command:
            assert '"meta_info"' in r.stdout or '"zoomr"' in r.stdout, (command, r.stdout[-500:])

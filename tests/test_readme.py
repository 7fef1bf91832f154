"""The README stays true: its first two commands are the ones CI runs, and its flag table matches the config."""

import re
from dataclasses import fields

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

"""tools/stamp.py: the line every result file written by tools/ starts with."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from mpirun import REPO

sys.path.insert(0, os.path.join(REPO, "tools"))
import stamp  # noqa: E402


def test_line_names_the_command_and_the_commit():
    line = stamp.line([os.path.join(REPO, "tools", "experiment_pcasgd.py"), "--seeds", "0,1",
                       "--note", "a b"])
    m = re.fullmatch(r"Made by `python tools/experiment_pcasgd.py --seeds 0,1 --note 'a b'` at "
                     r"commit (\S+)( \+ uncommitted changes)? \(\d{4}-\d\d-\d\d \d\d:\d\d UTC\)\.",
                     line)
    assert m, line
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True)
    if head.returncode == 0:
        assert m.group(1) == head.stdout.strip()
    else:
        assert m.group(1) == "unknown"

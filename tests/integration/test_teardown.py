"""Leaving the process group (``distributed.teardown``): after a clean end every rank waits for the others,
so none closes its connections while a peer still uses them; after an error a rank leaves at once. The two
ranks are started by hand so that neither is stopped by a launcher."""
import os
import subprocess
import sys

import pytest

from ..conftest import free_port

LEAVE = """\
import sys, time
from pathlib import Path
from dtr_plugins.core import distributed

folder, clean = Path(sys.argv[1]), sys.argv[2] == "clean"
d = distributed.setup("cpu")
if d.is_main:
    if clean:
        time.sleep(2)  # rank 1 is long at its teardown by now
    else:  # rank 1 must get out of its teardown without rank 0
        for _ in range(1200):
            if (folder / "rank1-left").exists():
                break
            time.sleep(0.1)
    (folder / "rank0-at-teardown").write_text("")
    distributed.teardown(d, clean=clean)
else:
    distributed.teardown(d, clean=clean)
    (folder / "rank1-left").write_text("")
    print("rank 0 was at its teardown" if (folder / "rank0-at-teardown").exists() else "rank 0 was not there yet")
"""


@pytest.mark.parametrize("clean, seen", [(True, "rank 0 was at its teardown"), (False, "rank 0 was not there yet")])
def test_a_clean_teardown_waits_for_every_rank_and_an_errored_one_does_not(tmp_path, clean, seen):
    script = tmp_path / "leave.py"
    script.write_text(LEAVE)
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path), "clean" if clean else "error"],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        outs.append(out.strip())
    assert outs[1] == seen

"""Every entry point runs torch's OpenMP threads with the sleeping wait policy, as `make` does.

Read back from the OpenMP runtime itself: with OMP_DISPLAY_ENV=VERBOSE, libgomp prints its settings
when torch loads it, and GOMP_SPINCOUNT says how idle threads wait (0: they sleep at once, as
OMP_WAIT_POLICY=PASSIVE asks; 300000: the default spin; 30000000000: ACTIVE).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_project import REPO

ENTRY_POINTS = {
    "frcnn": [str(Path(sys.executable).parent / "frcnn"), "train", "--help"],  # the console script
    "stage": [sys.executable, "stages/train.py", "--help"],
    # the launcher imports torch before any of our code; its worker must still sleep
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1",
                 "stages/train.py", "--help"],
}


def spin_counts(cmd: list[str], **env: str) -> list[int]:
    """The GOMP_SPINCOUNT of every OpenMP runtime `cmd`'s processes loaded, in print order."""
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(cmd, cwd=REPO, env={**clean, "OMP_DISPLAY_ENV": "VERBOSE", **env},
                         capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return [int(n) for n in re.findall(r"GOMP_SPINCOUNT = '(\d+)'", out.stdout + out.stderr)]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_run_openmp_threads_that_sleep(entry):
    counts = spin_counts(ENTRY_POINTS[entry])
    assert counts, "no OpenMP runtime reported its settings: torch was not loaded"
    # the last runtime to load is the one that trains (torchrun's worker, after its launcher)
    assert counts[-1] == 0, counts


def test_a_policy_the_user_set_wins():
    assert set(spin_counts(ENTRY_POINTS["stage"], OMP_WAIT_POLICY="ACTIVE")) == {30000000000}


def test_without_the_package_the_runtime_would_spin():
    # the control: torch alone, no policy set, spins; so the tests above measure our setting
    assert spin_counts([sys.executable, "-c", "import torch"]) == [300000]

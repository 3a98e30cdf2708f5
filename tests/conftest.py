"""Shared test setup. Loaded by pytest before any test module imports torch."""

import os

# OpenMP threads that busy-wait between parallel regions (libgomp's default) make PyTorch on CPU
# up to ~20x slower whenever another process competes for the cores: measured on 2 cores, one
# training step of the overfit test went from 0.16 s to 3-4 s. Sleeping threads cost ~15% when
# the machine is idle and remove that cliff. Must be set before torch loads; an explicit
# OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

"""Loops around the model: training (`trainer`), its schedule, devices, distributed data
parallelism, checkpoints, inference and backbone pretraining."""

"""Launchers: a grid, a run or a training command on a Cloud TPU slice (`launch.tpu`) or a
SLURM GPU cluster (`launch.slurm`). docs/launching.md walks through a first run of each."""

"""`edgepipe sweep`: every model x precision x target GPU, fanned out on Ray (docs/sweep.md)."""

from pipeline.sweep.driver import sweep
from pipeline.sweep.inputs import SweepModel, SweepSettings, as_list

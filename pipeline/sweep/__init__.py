"""`edgepipe sweep`: every model x precision x target GPU, fanned out on Ray (embedded by default).

The rooms and their order are in docs/architecture.md (a contract in pyproject.toml keeps it). Ray
is imported only when a sweep or a worker runs, so nothing else pays for it.
"""

from pipeline.sweep.driver import sweep
from pipeline.sweep.inputs import SweepModel, SweepSettings, as_list

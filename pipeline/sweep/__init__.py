"""`edgepipe sweep`: every model x precision x target GPU, fanned out on Ray (embedded by default).

The rooms, top to bottom (a contract in pyproject.toml keeps this order):

- ``driver``: ``sweep()``: prepare each model, decide each cell (skip, reuse, submit), write what comes back.
- ``report``: sweep.json and sweep.md, one row per model x precision x target.
- ``cell``: one cell on a worker: build, and where the worker has the GPU, validate and bench.
- ``inputs``: models (names or a models file), precisions and targets, checked before Ray starts.
- ``cluster``: Ray: connect, probe and check the nodes, submit, take results back; a worker's resources.
- ``adapter``: the one room that calls into the rest of edgepipe (run, build, validate, bench, manifests).
- ``targets``: ``sm_XY``, a target GPU and the Ray resource that serves it.

Ray is imported only when a sweep or a worker runs, so nothing else pays for it.
"""

from pipeline.sweep.driver import DEFAULT_OUTPUT, sweep
from pipeline.sweep.inputs import SweepModel, SweepSettings

"""`edgepipe sweep` (docs/sweep.md): prepare each model, decide each cell, submit, write what comes back.

Everything is decided before submitting, so a target no worker serves is skipped with that reason (Ray
would wait for it forever) and a sweep with nothing changed submits no task.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pipeline.sweep.adapter as edgepipe
import pipeline.sweep.connection as connection
import pipeline.sweep.report as sweep_report
from pipeline.defaults import DEFAULT_SWEEP_OUTPUT
from pipeline.errors import EdgepipeError
from pipeline.precision import Precision
from pipeline.sweep.cell import Cell, build_cell, choose_backend, previous_rows, receive
from pipeline.sweep.cluster import Cluster, Node, parse_target
from pipeline.sweep.inputs import SweepModel, SweepSettings, resolve

ORPHAN_CHECK_S = 15.0  # how often pending cells are checked against the nodes still alive


def sweep(
    models: list[str | SweepModel] | None = None,
    models_file: str | Path | None = None,
    precisions: list[str | Precision] | tuple[str | Precision, ...] | None = None,
    targets: list[str] | None = None,
    output: str | Path = DEFAULT_SWEEP_OUTPUT,
    settings: SweepSettings | None = None,
    **flags: Any,
) -> dict[str, Any]:
    """Run the sweep into ``output``; returns the report (also written as sweep.json and sweep.md).
    ``targets`` None sweeps every target a worker advertises; ``flags``: the fields of ``SweepSettings``."""
    specs, chosen_precisions, chosen_targets = resolve(models, models_file, precisions, targets)
    settings = settings or SweepSettings(**flags)
    folder, address = Path(output), settings.address
    if address not in ("local", "auto"):
        connection.split_address(address)
    started, ray_output = time.perf_counter(), connection.RayOutput()
    with contextlib.closing(ray_output), connection.connect(settings, ray_output) as cluster:
        nodes = cluster.nodes()
        connected = time.perf_counter() - started
        chosen_targets = chosen_targets or sorted(
            {t for n in nodes for t in n.targets}, key=lambda t: edgepipe.cc_key(parse_target(t))
        )
        if not chosen_targets:
            raise EdgepipeError(
                "no worker advertises a target GPU, and --targets was not given",
                fix="join GPU machines with 'edgepipe worker --address HEAD:PORT', or pass --targets sm_XY",
            )
        folder.mkdir(parents=True, exist_ok=True)  # only now: bad input writes nothing
        ray_output.keep(folder)  # Ray's start-up output in DIR/ray.log, not on the terminal
        driver = _Driver(cluster, nodes, folder, settings)
        driver.run(specs, chosen_precisions, chosen_targets, overlap=address != "local")
    driver.timings.update(connect_and_probe=round(connected, 2))
    report = sweep_report.assemble(driver, specs, chosen_precisions, chosen_targets, time.perf_counter() - started)
    edgepipe.write_report(report, folder, "sweep", sweep_report.to_markdown)
    if driver.stopped_by:
        raise EdgepipeError(
            f"{driver.stopped_by} (--strict stopped the sweep; report in {folder / 'sweep.md'})",
            fix="fix the cause and sweep again (finished cells are reused), or drop --strict to record failures and go on",
        )
    return report


class _Driver:
    """Prepares models, decides each cell, submits what must be built and writes what comes back."""

    def __init__(self, cluster: Cluster, nodes: list[Node], folder: Path, settings: SweepSettings):
        self.cluster, self.nodes, self.folder, self.settings = cluster, nodes, folder, settings
        self.previous = previous_rows(folder)
        self.cells: list[Cell] = []
        self.model_reports: dict[str, dict[str, Any]] = {}
        self.pending: dict[Any, Cell] = {}
        self.objects: dict[Path, Any] = {}
        self.sources: dict[str, dict[str, Any]] = {}
        self.submitted = 0
        self.stopped_by: str | None = None
        self.timings: dict[str, float] = {"prepare": 0.0, "wait_for_cells": 0.0}

    def run(
        self, specs: list[SweepModel], precisions: tuple[Precision, ...], targets: list[str], overlap: bool
    ) -> None:
        """Prepare each model and submit its cells: with ``overlap`` the cluster builds one model's engines while
        the driver prepares the next, without it (embedded Ray) every model is prepared first (docs/sweep.md)."""
        prepared = []
        for spec in specs:
            cells = [Cell(spec.name, p, t) for p in precisions for t in targets]
            self.cells.extend(cells)
            if self.stopped_by:
                continue
            started = time.perf_counter()
            report = self._prepare(spec, precisions)
            self.timings["prepare"] += time.perf_counter() - started
            prepared.append((cells, report))
            if overlap:
                self._submit(*prepared.pop())
        for cells, report in prepared:
            self._submit(cells, report)
        started = last_check = time.perf_counter()
        while self.pending:
            self._collect(timeout=1.0)
            if time.perf_counter() - last_check > ORPHAN_CHECK_S:
                self._fail_orphans()
                last_check = time.perf_counter()
        self.timings["wait_for_cells"] = time.perf_counter() - started
        self.timings = {k: round(v, 2) for k, v in self.timings.items()}
        for cell in self.cells:
            cell.row.setdefault("status", "skipped: --strict stopped the sweep")

    def _submit(self, cells: list[Cell], report: dict[str, Any] | None) -> None:
        for cell in cells:
            if not self.stopped_by:
                self._decide(cell, report)
        self.objects.clear()  # submitted tasks keep what they need alive
        self._collect(timeout=0)

    def _prepare(self, spec: SweepModel, precisions: tuple[Precision, ...]) -> dict[str, Any] | None:
        edgepipe.info(f"{spec.name}: target-independent stages in {self.folder / spec.name}", "bold")
        try:
            report = edgepipe.prepare_model(spec, self.folder / spec.name, precisions, self.settings.run_settings(spec))
        except EdgepipeError as exc:
            self.model_reports[spec.name] = {"error": str(exc)}
            if self.settings.strict:
                self._stop(f"{spec.name}: {exc}")
            return None
        self.model_reports[spec.name] = report
        onnx = edgepipe.onnx_models(report, self.folder / spec.name)
        self.sources[spec.name] = {"onnx": onnx, "reference": edgepipe.reference_of(report)}
        return report

    def _decide(self, cell: Cell, report: dict[str, Any] | None) -> None:
        """Skip, reuse, or submit one cell."""
        if report is None:
            why = self.model_reports[cell.model]["error"]
            return self._finish(cell, f"skipped: {cell.model} could not be prepared ({why})")
        model_dir = self.folder / cell.model
        onnx = self.sources[cell.model]["onnx"].get(cell.precision)
        builders = self._builders(cell)
        if onnx is None or not onnx.is_file():
            why = edgepipe.stage_problems(report) or "not made"
            return self._finish(cell, f"skipped: the {cell.precision.label} ONNX model was not made ({why})")
        if not any(cell.target in n.targets for n in self.nodes):
            return self._finish(cell, f"skipped: no worker advertises {cell.target}")
        if not builders:
            node = next(n for n in self.nodes if cell.target in n.targets)
            why = f"{node.name}: {choose_backend(cell.cc, node.gpu, node.flavours)[1]}"
            return self._finish(cell, f"skipped: no worker advertising {cell.target} can build it ({why})")
        onnx_sha = edgepipe.sha256_file(onnx)
        engine = model_dir / cell.engine_name
        if not self.settings.force and edgepipe.engine_is_current(engine, onnx_sha, cell.precision, cell.cc, builders):
            kept = self.previous.get(cell.artifact, {})
            same = kept.get("sha256") == edgepipe.sha256_file(engine)
            kept = {k: v for k, v in kept.items() if k not in ("status", "kind")} if same else {}
            measured = not str(kept.get("validation") or "skipped").startswith("skipped")
            gpu_in_cluster = any(cell.target in n.targets and n.gpu == cell.cc for n in self.nodes)
            if measured or not gpu_in_cluster:  # else: built ahead of time, and now a GPU can measure it
                return self._finish(cell, "reused", **{**kept, **edgepipe.engine_fields(engine, model_dir)})
        reference = self.sources[cell.model]["reference"]
        # what the worker needs: of the cell, of the sweep's settings, and of the files that come as bytes
        payload = {key: getattr(cell, key) for key in ("model", "precision", "target", "cc", "engine_name")}
        payload |= {key: getattr(self.settings, key) for key in ("data", "bench_batches", "bench_seconds")}
        payload |= {"onnx_name": onnx.name, "onnx_sha256": onnx_sha, "reference": reference and reference.suffix}
        objects = (self._object(onnx), self._object(reference) if reference else None)
        ref = self.cluster.submit(
            build_cell, payload, *objects, resources={cell.target: 1}, name=f"cell:{cell.artifact}"
        )
        self.pending[ref] = cell
        self.submitted += 1

    def _object(self, path: Path) -> Any:
        """The file's bytes in Ray's object store, put once for every cell that needs them."""
        if path not in self.objects:
            self.objects[path] = self.cluster.ray.put(path.read_bytes())
        return self.objects[path]

    def _builders(self, cell: Cell) -> set[tuple[str, str]]:
        """(flavour, version) of every builder a node advertising the cell's target would use."""
        chosen = [(choose_backend(cell.cc, n.gpu, n.flavours)[0], n) for n in self.nodes if cell.target in n.targets]
        return {(flavour, node.flavours[flavour]["version"]) for flavour, node in chosen if flavour}

    def _collect(self, timeout: float) -> None:
        done, _ = self.cluster.wait(list(self.pending), timeout=timeout)
        for ref in done:
            cell = self.pending.pop(ref)
            outcome = self.cluster.result(ref)
            if outcome.cancelled:
                continue
            if outcome.error:
                self._finish(cell, f"failed: {outcome.error}")
            else:
                onnx = self.sources[cell.model]["onnx"][cell.precision]
                status, fields = receive(self.folder / cell.model, cell, outcome.value, onnx)
                self._finish(cell, status, **fields)

    def _fail_orphans(self) -> None:
        """Pending cells whose target no alive node advertises any more: Ray would wait for them forever."""
        alive = {t for node in self.cluster.nodes(probe=False) for t in node.targets}
        for ref, cell in list(self.pending.items()):
            if cell.target not in alive:
                self.cluster.cancel([ref])
                del self.pending[ref]
                self._finish(cell, f"failed: every worker advertising {cell.target} left the cluster")

    def _finish(self, cell: Cell, status: str, **fields: Any) -> None:
        cell.row = {"status": status, **fields}
        where = f" on {fields['host']}" if fields.get("host") and status == "built" else ""
        edgepipe.info(f"  {cell.artifact}: {status if len(status) < 100 else status[:97] + '...'}{where}")
        if self.settings.strict and status.startswith("failed") and not self.stopped_by:
            self._stop(f"{cell.artifact} {status}")

    def _stop(self, reason: str) -> None:
        self.stopped_by = reason
        self.cluster.cancel(list(self.pending))
        self.pending.clear()

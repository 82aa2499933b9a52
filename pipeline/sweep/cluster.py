"""Ray for `edgepipe sweep`: target GPUs, the nodes, cell tasks and their results (connecting: ``connection``).

Ray Core is the engine; edgepipe adds no scheduler. A target GPU is a Ray custom resource named after its
compute capability, ``sm_XY`` (``sm_89: 1`` on an RTX 4090 machine: one task at a time per GPU, so timings
are honest). Nodes are probed before anything is submitted: one with another edgepipe would build other
engines, and Ray waits forever for a resource no node has. ``import ray`` happens inside functions: a
missing Ray is one clear error, and nothing else pays for it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pipeline.sweep.adapter as edgepipe
from pipeline.errors import EdgepipeError

INSTALL_FIX = "pip install 'edgepipe[ray]' (it pins the Ray version every node must run)"
PROBE_TIMEOUT_S = 120.0
DEFAULT_RETRIES = 2
TARGET = re.compile(r"sm_(\d+)(\d)", re.IGNORECASE)
# The compute capabilities NVIDIA GPUs have (CUDA's list, Maxwell to Blackwell): a target outside it is a typo.
KNOWN = (50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90, 100, 101, 103, 110, 120, 121)


def parse_target(name: str) -> str:
    """ "sm_89" -> "8.9", "sm_120" -> "12.0"; anything else is an error naming the fix."""
    match = TARGET.fullmatch(name.strip())
    if not match:
        raise EdgepipeError(
            f"target {name.strip()!r} is not sm_XY",
            fix="name targets by compute capability, e.g. --targets sm_89,sm_87 (RTX 4090 sm_89, Jetson Orin sm_87, A100 sm_80, H100 sm_90)",
        )
    if int(match.group(1) + match.group(2)) not in KNOWN:
        raise EdgepipeError(
            f"target {name.strip()!r} is no NVIDIA GPU architecture",
            fix=f"name a compute capability GPUs have: {', '.join(f'sm_{cc}' for cc in KNOWN)}",
        )
    return f"{int(match.group(1))}.{match.group(2)}"


def target_name(compute_capability: str) -> str:
    """ "8.9" -> "sm_89": the Ray resource a worker with that GPU advertises."""
    major, _, minor = compute_capability.partition(".")
    return f"sm_{major}{minor}"


def node_name(node: dict[str, Any]) -> str:
    """Host (or address) and the start of the node id, as nodes may share a machine; "" for a cell never placed."""
    return f"{node.get('host') or node.get('address', '')} ({node['node_id'][:8]})" if node.get("node_id") else ""


def require_ray() -> Any:
    try:
        import ray  # heavy (about a second): only sweep and worker need it
    except ImportError:
        raise EdgepipeError("Ray is not installed, and edgepipe sweep and worker run on Ray", fix=INSTALL_FIX) from None
    return ray


@dataclass
class Node:
    """One alive Ray node: what it advertises and what it runs (from the probe)."""

    node_id: str
    address: str
    resources: dict[str, float]
    probe: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return node_name(self.describe())

    @property
    def targets(self) -> list[str]:
        """The resources that name a target GPU (``sm_89``), not CPU, memory or the node."""
        return sorted(name for name in self.resources if TARGET.fullmatch(name))

    @property
    def gpu(self) -> str | None:
        return self.probe.get("gpu")

    @property
    def flavours(self) -> dict[str, dict[str, Any]]:
        return self.probe.get("flavours", {})

    def describe(self) -> dict[str, Any]:
        cpus, targets = self.resources.get("CPU", 0), {t: self.resources[t] for t in self.targets}
        return {"node_id": self.node_id, "address": self.address, "cpus": cpus, "targets": targets, **self.probe}


def probe_node() -> dict[str, Any]:
    """Runs on each node before a sweep: the versions and hardware the driver must agree with."""
    import ray  # runs inside a Ray task: Ray is there

    versions = {"edgepipe": edgepipe.EDGEPIPE_VERSION, "ray": ray.__version__, "python": platform.python_version()}
    hardware = {"gpu": edgepipe.gpu_compute_capability(), "flavours": edgepipe.tensorrt_flavours()}
    return {"host": socket.gethostname(), **versions, **hardware}


class Cluster:
    """A Ray connection for one sweep: nodes, submission, results."""

    def __init__(self, ray: Any, address: str, retries: int = DEFAULT_RETRIES):
        self.ray, self.address, self.retries = ray, address, retries
        self._remote: dict[Callable, Any] = {}

    def nodes(self, probe: bool = True) -> list[Node]:
        """Alive nodes; with ``probe``, each one's versions, checked against this driver's."""
        alive = [n for n in self.ray.nodes() if n["Alive"]]
        nodes = [Node(n["NodeID"], n["NodeManagerAddress"], dict(n["Resources"])) for n in alive]
        if probe:
            self._probe(nodes)
            check_versions(nodes, {"edgepipe": edgepipe.EDGEPIPE_VERSION, "ray": self.ray.__version__})
        return nodes

    def _probe(self, nodes: list[Node]) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = self._function(probe_node)
        refs = {}
        for node in nodes:  # num_cpus=0: a head node started with --num-cpus 0 answers too.
            strategy = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
            refs[probe.options(num_cpus=0, scheduling_strategy=strategy, max_retries=1).remote()] = node
        ready, late = self.ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
        if late:
            where = ", ".join(refs[r].name for r in late)
            raise EdgepipeError(
                f"node {where} did not answer the version probe within {PROBE_TIMEOUT_S:.0f} s",
                fix="check that edgepipe and Ray are installed there and that it can start Ray workers ('ray status' on the head)",
            )
        for ref in ready:
            outcome = self.result(ref)
            if outcome.error:
                raise EdgepipeError(
                    f"node {refs[ref].name} cannot run edgepipe's sweep code ({outcome.error})",
                    fix=f"install edgepipe {edgepipe.EDGEPIPE_VERSION} there, then restart its Ray node with 'edgepipe worker'",
                )
            refs[ref].probe = outcome.value

    def submit(self, fn: Callable, *args: Any, resources: dict[str, float], name: str) -> Any:
        """Run ``fn(*args)`` where ``resources`` are; a dead worker or node is retried, an exception is not."""
        options = dict(resources=resources, num_cpus=1, name=name, max_retries=self.retries, retry_exceptions=False)
        return self._function(fn).options(**options).remote(*args)

    def wait(self, refs: list[Any], timeout: float) -> tuple[list[Any], list[Any]]:
        return self.ray.wait(refs, num_returns=1, timeout=timeout) if refs else ([], [])

    def result(self, ref: Any) -> Outcome:
        """A finished task's value, or why it failed (an exception in the task or a system failure)."""
        from ray import exceptions as rayex

        try:
            return Outcome(value=self.ray.get(ref))
        except rayex.TaskCancelledError:
            return Outcome(error="cancelled", cancelled=True)
        except rayex.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            return Outcome(error=f"{type(cause).__name__}: {first_line(cause)}")
        except rayex.RayError as exc:  # worker or node died more often than the retries allow
            return Outcome(
                error=f"system failure after {self.retries} retries: {type(exc).__name__}: {first_line(exc)}"
            )

    def cancel(self, refs: list[Any]) -> None:
        for ref in refs:
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)

    def _function(self, fn: Callable) -> Any:
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(fn)
        return self._remote[fn]


@dataclass
class Outcome:
    """What came back from a task: its value, or why there is none."""

    value: Any = None
    error: str | None = None
    cancelled: bool = False


def check_versions(nodes: list[Node], driver: dict[str, str]) -> None:
    """Refuse the cluster when a node runs another edgepipe or Ray than this driver."""
    for key in ("edgepipe", "ray"):
        others = [n for n in nodes if n.probe.get(key) != driver[key]]
        if others:
            install = f"pip install '{'edgepipe[ray]' if key == 'edgepipe' else 'ray'}=={driver[key]}'"
            raise EdgepipeError(
                f"node {others[0].name} runs {key} {others[0].probe.get(key)}, this driver {driver[key]}; every node must run the same {key}",
                fix=f"{install} on that node and restart it with 'edgepipe worker --address HEAD:PORT'",
            )


def worker_resources(targets: list[str] | None = None, num_cpus: int | None = None) -> dict[str, float]:
    """The ``sm_XY`` resources this machine serves: its GPU (one task at a time), or, without a GPU,
    every TensorRT-RTX target from Ampere on, built ahead of time on the CPU (one per core)."""
    if targets:
        return {target_name(parse_target(t)): 1.0 for t in targets}
    gpu, flavours = edgepipe.gpu_compute_capability(), edgepipe.tensorrt_flavours()
    rtx = flavours.get(edgepipe.TENSORRT_RTX, {}).get("targets", [])
    if gpu and (edgepipe.TENSORRT in flavours or gpu in rtx):
        return {target_name(gpu): 1.0}
    slots = float(num_cpus or os.cpu_count() or 1)
    return {target_name(cc): slots for cc in rtx if int(cc.split(".")[0]) >= 8}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if "Traceback" in text else (text.splitlines() or [type(exc).__name__])[0]

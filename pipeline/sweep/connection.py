"""Connecting to Ray for `edgepipe sweep`: an embedded one-machine Ray, the cluster running here, or a head,
checked before ``ray.init`` (which would retry for minutes). Ray's own output (token authentication warnings
among it) goes to ``ray.log`` in the sweep directory, not to the terminal, unless ``EDGEPIPE_RAY_VERBOSE=1``."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import EdgepipeError
from pipeline.sweep.cluster import INSTALL_FIX, Cluster, first_line, require_ray, worker_resources

CONNECT_TIMEOUT_S = 5.0
VERBOSE_ENV = "EDGEPIPE_RAY_VERBOSE"  # 1: Ray's own output on the terminal, as Ray prints it


class RayOutput:
    """Where Ray's own output goes: a log file (moved into the sweep directory by ``keep``), or, with
    ``EDGEPIPE_RAY_VERBOSE=1``, the terminal as Ray prints it."""

    def __init__(self) -> None:
        verbose = os.environ.get(VERBOSE_ENV, "") not in ("", "0")
        self.folder: Path | None = None
        self.path = None if verbose else Path(tempfile.mkstemp(prefix="edgepipe-ray-", suffix=".log")[1])

    @contextlib.contextmanager
    def captured(self, fds: bool = True) -> Iterator[None]:
        """Ray's Python logger (its warnings while tasks run) into the file, and with ``fds`` this process's
        stdout and stderr too (Ray's start-up and shutdown lines); without, the terminal keeps edgepipe's output."""
        if self.path is None:
            yield
            return
        ray_logger = logging.getLogger("ray")
        handlers, ray_logger.handlers = ray_logger.handlers, [logging.FileHandler(self.path)]
        with open(self.path, "ab") as log:
            saved = [os.dup(fd) for fd in (1, 2)] if fds else []
            for fd in (1, 2)[: len(saved)]:
                os.dup2(log.fileno(), fd)
            try:
                yield
            finally:
                for fd, copy in zip((1, 2), saved):
                    os.dup2(copy, fd)
                    os.close(copy)
                ray_logger.handlers[0].close()
                ray_logger.handlers = handlers

    def keep(self, folder: Path) -> None:
        """Keep what is captured in ``folder/ray.log`` (once the sweep directory exists), now and at ``close``."""
        self.folder = folder
        if self.path is not None and self.path.exists() and self.path.stat().st_size:
            with open(folder / "ray.log", "ab") as log:
                log.write(self.path.read_bytes())
            self.path.write_bytes(b"")

    def close(self) -> None:
        """Keep the rest (Ray's shutdown) where ``keep`` said; drop the capture of a sweep refused before it."""
        if self.folder is not None:
            self.keep(self.folder)
        if self.path is not None:
            self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def connect(settings: Any, output: RayOutput) -> Iterator[Cluster]:
    """A Ray connection for a ``SweepSettings``' ``address``: "local" starts an embedded one-machine Ray
    (of ``resources`` and ``num_cpus``; stopped afterwards), "auto" joins the cluster running here,
    "HOST:PORT" a cluster's head. A connection the caller already made is used as it is and left open."""
    address, resources, num_cpus, retries = settings.address, settings.resources, settings.num_cpus, settings.retries
    ray = require_ray()
    if ray.is_initialized():
        yield Cluster(ray, address, retries)
        return
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)
    if address not in ("local", "auto"):
        check_reachable(*split_address(address))
        check_head(ray, address)
    if address == "local":
        quiet.update(resources=resources if resources is not None else worker_resources(num_cpus=num_cpus))
        quiet.update(num_cpus=num_cpus)
    with output.captured():
        _init(ray, address, dict(address=address, **quiet))
    try:
        with output.captured(fds=False):
            yield Cluster(ray, address, retries)
    finally:
        with output.captured():
            ray.shutdown()


def _init(ray: Any, address: str, options: dict[str, Any]) -> None:
    try:
        ray.init(**options)
    except ConnectionError as exc:
        if address == "auto":
            raise EdgepipeError(
                "no Ray cluster is running on this machine (--address auto)",
                fix="start one with 'ray start --head', or use --address local for an embedded one",
            ) from None
        raise EdgepipeError(
            f"cannot connect to Ray at {address}: {first_line(exc)}",
            fix="check the head's address and port ('ray status' on the head)",
        ) from None
    except RuntimeError as exc:
        if "version" in str(exc).lower():
            raise EdgepipeError(
                f"the Ray cluster at {address} runs another Ray or Python version ({first_line(exc)})",
                fix=f"run Ray {ray.__version__} and the same Python version on the driver and every node ({INSTALL_FIX})",
            ) from None
        raise


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EdgepipeError(
            f"--address {address!r} is not local, auto or HOST:PORT",
            fix="pass e.g. --address 10.0.0.1:6379 (the head's 'ray start --head' port), or --address local",
        )
    return host, int(port)


def check_reachable(host: str, port: int) -> None:
    """One fast TCP connect: Ray itself retries an unreachable head for many minutes."""
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise EdgepipeError(
            f"cannot reach a Ray head at {host}:{port} ({exc.strerror or exc})",
            fix="start the head with 'ray start --head --port PORT' and check the address and firewall, or use --address local",
        ) from None


def check_head(ray: Any, address: str) -> None:
    """Ask the head for its Ray and Python versions before joining (a bounded wait, not Ray's endless retry)."""
    try:
        from ray._raylet import GcsClient  # internal but stable since Ray 2.0; skipped if it moves

        raw = GcsClient(address=address).internal_kv_get(
            b"CLUSTER_METADATA", namespace=b"cluster", timeout=CONNECT_TIMEOUT_S * 2
        )
    except ImportError:
        return
    except Exception as exc:  # noqa: BLE001  (Ray's RpcError/RuntimeError: nothing answered as a Ray head)
        raise EdgepipeError(
            f"{address} does not answer as a Ray head ({first_line(exc)})",
            fix="pass the GCS port printed by 'ray start --head' (6379 by default)",
        ) from None
    meta = json.loads(raw) if raw else {}
    head_ray, head_python = meta.get("ray_version"), meta.get("python_version")
    if head_ray and head_ray != ray.__version__:
        raise EdgepipeError(
            f"the Ray head at {address} runs Ray {head_ray}, this driver Ray {ray.__version__}",
            fix=f"run the same Ray on every machine: {INSTALL_FIX}",
        )
    if head_python and head_python.rsplit(".", 1)[0] != platform.python_version().rsplit(".", 1)[0]:
        raise EdgepipeError(
            f"the Ray head at {address} runs Python {head_python}, this driver Python {platform.python_version()}",
            fix="run the driver with the head's Python version (Ray clusters need one Python version)",
        )

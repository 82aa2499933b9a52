"""A Jetson's state around a measurement, and ``Telemetry``: the state at start and end, and the power between.

A latency from a Jetson means little without its state: the power mode (``nvpmodel``), whether
``jetson_clocks`` locked the clocks, the GPU/EMC/CPU clocks, the fan, the temperatures and
whether it throttled. Everything here reads files, under a root directory ("/" on the device) so
tests read fixture trees:

- ``/proc/device-tree/model`` (the module), ``/etc/nv_tegra_release`` (L4T: ``# R36 (release), REVISION: 4.3``);
- ``/var/lib/nvpmodel/status`` (``pmode:0000``: the power mode nvpmodel set);
- ``/sys/class/devfreq/*gpu*|*ga10b*|*gb10b*`` (GPU clock and its min/max), ``/sys/kernel/debug/bpmp/debug/clk/emc/rate``
  (EMC, readable as root), ``/sys/devices/system/cpu/cpu*/cpufreq`` (CPU); ``jetson_clocks`` pins each
  min to its max, which is how its state is read;
- ``/sys/class/hwmon/*/name`` = ``pwmfan`` with ``pwm1`` (0-255), ``/sys/class/thermal/thermal_zone*``.

The root is ``$EDGEPIPE_SYSFS_ROOT`` when set (``default_root``). ``Telemetry(root).start()`` ...
``stop(inferences)`` samples the rails (``power``) on a thread (tegrastats lines where there is no
INA3221 in sysfs) and returns one record; ``bench`` calls it around each timed window
(``open_telemetry``) and keeps the state at its start and end (``bench_record``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.deploy import power
from pipeline.errors import EdgepipeError

GPU_DEVFREQ = ("gpu", "ga10b", "gb10b", "gv11b")  # devfreq names of Jetson GPUs (Orin: 17000000.ga10b)
ROOT_ENV = "EDGEPIPE_SYSFS_ROOT"  # where /sys, /proc, /etc and /var are read from ("/" unless set)
NOT_A_JETSON = "not a Jetson (no /etc/nv_tegra_release): no power mode, clocks or rail power recorded"
# L4T release -> JetPack (NVIDIA's JetPack archive); a release not listed reads as its major's JetPack ("6.x").
JETPACK = {
    "R35.1.0": "5.0.2", "R35.2.1": "5.1", "R35.3.1": "5.1.1", "R35.4.1": "5.1.2", "R35.5.0": "5.1.3",
    "R35.6.0": "5.1.4", "R36.2.0": "6.0 DP", "R36.3.0": "6.0", "R36.4.0": "6.1", "R36.4.3": "6.2",
    "R36.4.4": "6.2.1", "R38.2.0": "7.0",
}  # fmt: skip
_JETPACK_MAJOR = {"R32": "4.x", "R34": "5.0 DP", "R35": "5.x", "R36": "6.x", "R38": "7.x"}
END_KEYS = ("temperatures_c", "throttling", "hot_zones", "gpu_hz", "fan_pwm")  # what can change during a bench


def default_root() -> Path:
    """``$EDGEPIPE_SYSFS_ROOT`` (a copied tree, in tests), else "/"."""
    return Path(os.environ.get(ROOT_ENV) or "/")


def jetpack(l4t: str | None) -> str | None:
    """The JetPack of an L4T release (``R36.4.3`` -> ``6.2``)."""
    if l4t is None:
        return None
    return JETPACK.get(l4t) or _JETPACK_MAJOR.get(l4t.split(".")[0])


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip().strip("\x00")
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _text(path)
    return int(text) if text and text.lstrip("-").isdigit() else None


def l4t_release(root: Path) -> str | None:
    """``R36.4.3`` from ``/etc/nv_tegra_release``'s first line (``# R36 (release), REVISION: 4.3, ...``)."""
    text = _text(root / "etc/nv_tegra_release") or ""
    match = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", text)
    return f"R{match.group(1)}.{match.group(2)}" if match else None


def clocks(root: Path) -> dict[str, Any]:
    """GPU, EMC and CPU clocks (Hz) and whether jetson_clocks pinned them (every min equal to its max)."""
    gpu = next(
        (d for d in sorted((root / "sys/class/devfreq").glob("*")) if any(n in d.name for n in GPU_DEVFREQ)), None
    )
    gpu_clock = {key: _int(gpu / f"{key}_freq") for key in ("cur", "min", "max")} if gpu else {}
    cpus = sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq"))
    cpu = [{key: _int(c / f"scaling_{key}_freq") for key in ("cur", "min", "max")} for c in cpus]
    pinned = [gpu_clock] + cpu if gpu_clock else cpu
    return {
        "gpu_hz": gpu_clock.get("cur"),
        "gpu_max_hz": gpu_clock.get("max"),
        "emc_hz": _int(root / "sys/kernel/debug/bpmp/debug/clk/emc/rate"),
        "cpu_khz": [c["cur"] for c in cpu],
        "jetson_clocks": bool(pinned) and all(c["min"] is not None and c["min"] == c["max"] for c in pinned),
    }


def temperatures(root: Path) -> dict[str, float]:
    """Each thermal zone's temperature in degrees C."""
    zones = {}
    for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        name, milli = _text(zone / "type"), _int(zone / "temp")
        if name and milli is not None:
            zones[name] = milli / 1000.0
    return zones


def throttled_zones(root: Path) -> list[str]:
    """Zones at or above their first passive trip point (where the kernel starts to cut clocks)."""
    hot = []
    for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        temp = _int(zone / "temp")
        for trip in sorted(zone.glob("trip_point_*_type")):
            limit = _int(trip.with_name(trip.name.replace("_type", "_temp")))
            if _text(trip) == "passive" and temp is not None and limit is not None and temp >= limit:
                hot.append(_text(zone / "type") or zone.name)
                break
    return hot


def fan_pwm(root: Path) -> int | None:
    for hwmon in sorted((root / "sys/class/hwmon").glob("hwmon*")):
        if _text(hwmon / "name") == "pwmfan":
            return _int(hwmon / "pwm1")
    return None


def read_state(root: str | Path = "/") -> dict[str, Any]:
    """The module, L4T, power mode, clocks, fan, temperatures and throttling, now; {"jetson": False} elsewhere."""
    root = Path(root)
    if l4t_release(root) is None:
        return {"jetson": False}
    mode = re.search(r"pmode:(\d+)", _text(root / "var/lib/nvpmodel/status") or "")
    clock = clocks(root)
    hot = throttled_zones(root)
    return {
        "jetson": True,
        "module": _text(root / "proc/device-tree/model"),
        "l4t": l4t_release(root),
        "jetpack": jetpack(l4t_release(root)),
        "nvpmodel": int(mode.group(1)) if mode else None,
        **clock,
        "fan_pwm": fan_pwm(root),
        "temperatures_c": temperatures(root),
        "throttling": bool(hot) or (clock["jetson_clocks"] and clock["gpu_hz"] != clock["gpu_max_hz"]),
        "hot_zones": hot,
    }


def open_telemetry(root: str | Path | None = None) -> Telemetry | None:
    """A ``Telemetry`` for timed windows on a Jetson (its rails checked now); None elsewhere."""
    root = Path(root) if root is not None else default_root()
    return Telemetry(root) if l4t_release(root) is not None else None


def bench_record(start: dict[str, Any], telemetry: Telemetry | None) -> dict[str, Any]:
    """What a bench keeps of the Jetson: its state at start, what changed by the end, where power came from."""
    if telemetry is None or not start.get("jetson"):
        return {"jetson": False, "note": NOT_A_JETSON}
    end = read_state(telemetry.root)
    return {
        **start,
        "end": {key: end.get(key) for key in END_KEYS},
        "throttled": bool(start["throttling"] or end["throttling"]),
        "power_source": telemetry.source,
        "root": str(telemetry.root),
    }


class Telemetry:
    """The Jetson's state at start and end and each rail's power between: ``start()``, then ``stop(inferences)``."""

    def __init__(self, root: str | Path = "/", interval: float = 0.05):
        self.root, self.interval = Path(root), interval
        self.rails = power.find_rails(self.root)  # unknown rail names fail here, before any measurement
        self.trace: power.Trace = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen | None = None
        self.start_state: dict[str, Any] = {}
        self._started = time.perf_counter()
        self._error: EdgepipeError | None = None

    @property
    def source(self) -> str | None:
        if self.rails:
            return "ina3221"
        return "tegrastats" if l4t_release(self.root) is not None and shutil.which("tegrastats") else None

    def start(self) -> Telemetry:
        self.start_state = read_state(self.root)
        self.trace, self._stop, self._error = [], threading.Event(), None
        source = self.source
        if source == "tegrastats":  # started here, so stop() always has the process to end
            interval_ms = str(max(10, int(self.interval * 1000)))
            self._process = subprocess.Popen(
                ["tegrastats", "--interval", interval_ms], stdout=subprocess.PIPE, text=True
            )
        target = {"ina3221": self._sample_sysfs, "tegrastats": self._sample_tegrastats}.get(source)
        self._thread = threading.Thread(target=target, daemon=True) if target else None
        self._started = time.perf_counter()
        if self._thread is not None:
            self._thread.start()
        return self

    def stop(self, inferences: int | None = None, seconds: float | None = None) -> dict[str, Any]:
        """The record of the window since ``start()``: each rail's mean power, and its energy over ``seconds``
        (the timed loop's, when the caller knows it; else the time since ``start()``)."""
        seconds = seconds or time.perf_counter() - self._started
        self._stop.set()
        if self._process is not None:
            self._process.terminate()
        if self._thread is not None:
            self._thread.join()
        if self._process is not None:
            self._process.wait()
            self._process = None
        if self._error is not None:
            raise self._error
        end = read_state(self.root)
        return {
            "start": self.start_state,
            "end": {key: end.get(key) for key in END_KEYS},
            "power_source": self.source,
            "samples": len(self.trace),
            "rails": power.summarize(self.trace, inferences, seconds),
        }

    def _sample_sysfs(self) -> None:
        while True:
            self.trace.append((time.perf_counter(), power.read_rails(self.rails)))
            if self._stop.wait(self.interval):
                self.trace.append((time.perf_counter(), power.read_rails(self.rails)))
                return

    def _sample_tegrastats(self) -> None:
        for line in self._process.stdout:
            try:
                self.trace.append((time.perf_counter(), power.parse_tegrastats(line)))
            except EdgepipeError as error:  # unknown rail names: stop() raises it, on the caller's thread
                self._error = error
                return
            if self._stop.is_set():
                return

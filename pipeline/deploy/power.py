"""Power of a Jetson's rails: the on-board INA3221 monitors in sysfs, or tegrastats lines; energy over a window.

Each INA3221 channel is a hwmon ``inN_label`` (the rail's name), ``inN_input`` (bus voltage, mV)
and ``currN_input`` (current, mA) under ``/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/``; power is
their product. ``RAILS`` names the rails of each module (Jetson Linux Developer Guide, "Platform
Power and Performance", power monitor tables; tegrastats prints the same names):

- Jetson AGX Orin: ``VDD_GPU_SOC``, ``VDD_CPU_CV``, ``VIN_SYS_5V0`` (1-0040), ``VDDQ_VDD2_1V8AO`` (1-0041);
- Jetson Orin NX / Nano: ``VDD_IN`` (module input), ``VDD_CPU_GPU_CV``, ``VDD_SOC``;
- Jetson Thor: ``VDD_GPU``, ``VDD_CPU_SOC_MSS``, ``VIN_SYS_5V0`` (INA3221), ``VIN`` (INA238, the module input).

A tree with a rail outside that list is refused, naming it: a misread rail would make energy
figures that compare across boards but mean different things. ``integrate`` turns a timed trace
of samples into energy (trapezoids): mean mW x seconds = mJ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import EdgepipeError

RAILS = {
    "Jetson AGX Orin": ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"),
    "Jetson Orin NX / Nano": ("VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"),
    "Jetson Thor": ("VDD_GPU", "VDD_CPU_SOC_MSS", "VIN_SYS_5V0", "VIN"),
}
KNOWN = frozenset(name for names in RAILS.values() for name in names)
IGNORED = frozenset({"NC", "sum of shunt voltages"})  # unconnected channels and the INA3221's summing channel
HWMON_GLOB = "sys/bus/i2c/drivers/ina*/*/hwmon/hwmon*/in*_label"
_TEGRASTATS_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]+) (\d+)mW/(\d+)mW")


@dataclass(frozen=True)
class Rail:
    """One monitored rail: its name and the sysfs files of its voltage (mV) and current (mA)."""

    name: str
    voltage: Path
    current: Path

    def milliwatts(self) -> float:
        return float(self.voltage.read_text()) * float(self.current.read_text()) / 1000.0


def find_rails(root: str | Path = "/") -> list[Rail]:
    """The rails under ``root``'s INA3221 (and INA238) hwmon; [] where there are none (not a Jetson)."""
    rails, unknown = [], []
    for label in sorted(Path(root).glob(HWMON_GLOB)):
        name = label.read_text().strip()
        index = label.name[len("in") : -len("_label")]
        current = label.with_name(f"curr{index}_input")
        if name in IGNORED or not current.exists():
            continue
        (rails if name in KNOWN else unknown).append(Rail(name, label.with_name(f"in{index}_input"), current))
    if unknown:
        names = ", ".join(rail.name for rail in unknown)
        raise EdgepipeError(
            f"unknown power rails {names} under {Path(root) / 'sys/bus/i2c/drivers'}: edgepipe knows the rails of "
            f"{', '.join(RAILS)} only, and a misread rail would make energy figures that mean something else",
            fix="add this module's rails to RAILS in pipeline/deploy/power.py, from the power monitor table of "
            "its Jetson Linux Developer Guide",
        )
    return rails


def read_rails(rails: list[Rail]) -> dict[str, float]:
    """Each rail's power now, in mW."""
    return {rail.name: rail.milliwatts() for rail in rails}


def parse_tegrastats(line: str) -> dict[str, float]:
    """The rails of one tegrastats line (``VDD_GPU_SOC 3176mW/3176mW``: now/average), now in mW."""
    found = {name: float(now) for name, now, _ in _TEGRASTATS_RAIL.findall(line)}
    unknown = sorted(set(found) - KNOWN)
    if unknown:
        raise EdgepipeError(
            f"unknown power rails {', '.join(unknown)} in tegrastats output",
            fix="add this module's rails to RAILS in pipeline/deploy/power.py",
        )
    return found


Trace = list[tuple[float, dict[str, float]]]  # (seconds, {rail: mW}) in time order


def integrate(trace: Trace) -> dict[str, float]:
    """Each rail's energy over the trace in mJ (trapezoids between samples)."""
    energy: dict[str, float] = {}
    for (t0, p0), (t1, p1) in zip(trace, trace[1:]):
        for rail in p0.keys() & p1.keys():
            energy[rail] = energy.get(rail, 0.0) + (p0[rail] + p1[rail]) / 2 * (t1 - t0)
    return energy


def summarize(trace: Trace, inferences: int | None = None, seconds: float | None = None) -> dict[str, dict[str, float]]:
    """Per rail: mean power (mW) over the trace, energy (mJ) over ``seconds`` (default: the trace's span) at that
    mean, and mJ per inference when ``inferences`` is known.

    ``seconds`` is the timed window when the samples cover only part of it (tegrastats prints a line per interval).
    """
    if len(trace) < 2 or trace[-1][0] <= trace[0][0]:
        return {}
    span = trace[-1][0] - trace[0][0]
    result = {}
    for rail, mj in sorted(integrate(trace).items()):
        mean_mw = mj / span
        row = {"mean_mw": mean_mw, "energy_mj": mean_mw * (seconds or span)}
        if inferences:
            row["mj_per_inference"] = row["energy_mj"] / inferences
        result[rail] = row
    return result

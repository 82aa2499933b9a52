"""Jetson state and rail power, read from sysfs trees and tegrastats lines of real boards (tests/fixtures/jetson)."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import pytest

from pipeline.deploy import jetson, power
from pipeline.errors import EdgepipeError

FIXTURES = Path(__file__).parent / "fixtures" / "jetson"

# board -> rails and their power in mW (bus mV x mA / 1000, from the fixture's hwmon files)
EXPECTED_RAILS = {
    "orin_agx": {"VDD_GPU_SOC": 4984 * 1020, "VDD_CPU_CV": 4984 * 480, "VIN_SYS_5V0": 4976 * 720, "VDDQ_VDD2_1V8AO": 4992 * 190},
    "orin_nano": {"VDD_IN": 5056 * 1320, "VDD_CPU_GPU_CV": 5048 * 210, "VDD_SOC": 5048 * 300},
    "thor": {"VDD_GPU": 19920 * 1210, "VDD_CPU_SOC_MSS": 19920 * 560, "VIN_SYS_5V0": 5008 * 900},
}  # fmt: skip


@pytest.mark.parametrize("board", sorted(EXPECTED_RAILS))
def test_rails_from_sysfs(board):
    rails = power.find_rails(FIXTURES / board)
    got = power.read_rails(rails)
    assert got == pytest.approx({name: mw / 1000 for name, mw in EXPECTED_RAILS[board].items()})


def test_state_of_each_board():
    agx, nano, thor = (jetson.read_state(FIXTURES / b) for b in ("orin_agx", "orin_nano", "thor"))
    assert agx["module"] == "NVIDIA Jetson AGX Orin Developer Kit" and agx["l4t"] == "R36.4.3"
    assert agx["nvpmodel"] == 0 and agx["jetson_clocks"] and agx["gpu_hz"] == 1300500000
    assert agx["emc_hz"] == 3199000000 and agx["fan_pwm"] == 255 and not agx["throttling"]
    assert agx["temperatures_c"]["tj-thermal"] == 53.0
    assert nano["nvpmodel"] == 1 and not nano["jetson_clocks"] and nano["emc_hz"] is None and not nano["throttling"]
    assert thor["l4t"] == "R38.2.0" and thor["throttling"] and thor["hot_zones"] == ["tj-thermal"]
    assert jetson.read_state(FIXTURES / "missing") == {"jetson": False}


@pytest.mark.parametrize("board", sorted(EXPECTED_RAILS))
def test_tegrastats_lines(board):
    line = (FIXTURES / board / "tegrastats.txt").read_text()
    rails = power.parse_tegrastats(line)
    assert set(EXPECTED_RAILS[board]) <= set(rails)
    if board == "thor":
        assert rails["VIN"] == 52710.0  # the module input, on the INA238 tegrastats reads
    if board == "orin_agx":
        assert rails["VDD_GPU_SOC"] == 5083.0


def test_energy_of_a_synthetic_trace_with_a_known_integral():
    # p(t) = 1000 + 500 sin(2 pi t) mW over 2 s (two whole periods): exactly 2000 mJ; a ramp 0 -> 400 mW over 2 s: 400 mJ
    steps = 4000
    trace = [
        (2 * i / steps, {"VDD_IN": 1000 + 500 * math.sin(2 * math.pi * 2 * i / steps), "VDD_SOC": 200 * 2 * i / steps})
        for i in range(steps + 1)
    ]
    energy = power.integrate(trace)
    assert energy["VDD_IN"] == pytest.approx(2000.0, abs=1e-6) and energy["VDD_SOC"] == pytest.approx(400.0, rel=1e-12)
    summary = power.summarize(trace, inferences=500)
    assert summary["VDD_IN"]["mean_mw"] == pytest.approx(1000.0, abs=1e-6)
    assert summary["VDD_IN"]["mj_per_inference"] == pytest.approx(4.0, abs=1e-8)


def test_telemetry_records_state_and_energy_over_a_timed_window():
    telemetry = jetson.Telemetry(FIXTURES / "orin_nano", interval=0.01).start()
    time.sleep(0.2)
    record = telemetry.stop(inferences=100)
    assert record["power_source"] == "ina3221" and record["samples"] >= 3
    assert record["start"]["module"] == "NVIDIA Jetson Orin Nano Developer Kit"
    vdd_in = record["rails"]["VDD_IN"]
    assert vdd_in["mean_mw"] == pytest.approx(5056 * 1320 / 1000)
    assert vdd_in["mj_per_inference"] == pytest.approx(vdd_in["energy_mj"] / 100)
    assert vdd_in["energy_mj"] / vdd_in["mean_mw"] >= 0.2  # the window's seconds


def test_not_a_jetson_records_no_power(tmp_path):
    record = jetson.Telemetry(tmp_path).start().stop(inferences=10)
    assert record["power_source"] is None and record["rails"] == {} and record["start"] == {"jetson": False}


def test_unknown_rail_names_are_one_line_naming_them(tmp_path):
    tree = tmp_path / "board"
    shutil.copytree(FIXTURES / "orin_nano", tree)
    label = next(tree.glob(power.HWMON_GLOB))
    label.write_text("VDD_MYSTERY\n")
    with pytest.raises(EdgepipeError) as error:
        jetson.Telemetry(tree)
    message = str(error.value)
    assert "VDD_MYSTERY" in message and "Fix:" in message and "\n" not in message
    with pytest.raises(EdgepipeError, match="VDD_FOO"):
        power.parse_tegrastats("RAM 1/2MB VDD_FOO 100mW/100mW")

import json
import os
import shlex
import sys

import click

from pipeline.commands.options import EdgepipeCommand, emit, json_option
from pipeline.errors import EdgepipeError
from pipeline.progress import out


@click.command("worker", cls=EdgepipeCommand)
@click.option(
    "--address",
    required=True,
    metavar="HEAD:PORT",
    help="The head's address ('ray start --head' prints it; port 6379 by default).",
)
@click.option(
    "--targets",
    metavar="sm_89,...",
    help="Targets to advertise (default: this GPU; without a GPU, the TensorRT-RTX targets built ahead of time).",
)
@click.option("--num-cpus", type=int, help="CPUs Ray may use here (default: all).")
@click.option("--temp-dir", metavar="DIR", help="Ray's temporary directory on this machine.")
@click.option("--dry-run", is_flag=True, help="Print the 'ray start' command instead of running it.")
@json_option
def worker_command(address, targets, num_cpus, temp_dir, dry_run, as_json):
    """Join a Ray cluster as a sweep worker advertising this machine's target GPU.

    Detects the GPU's compute capability and the TensorRT flavour, then runs 'ray start' with
    the matching resource (sm_89: 1 for an RTX 4090: one engine at a time per GPU, for honest
    timings). Without a GPU, TensorRT-RTX builds ahead of time for sm_80, sm_86, sm_89, sm_120 and
    sm_121. It blocks until stopped (Ctrl-C); stop it with its pid, not 'ray stop', which stops
    every Ray node on the machine.

    \b
    Example (on each GPU machine; RAY_AUTH_MODE/RAY_AUTH_TOKEN as on the head):
      edgepipe worker --address 10.0.0.1:6379
      edgepipe worker --address 10.0.0.1:6379 --targets sm_87 --dry-run
    """
    # the sweep's Ray room reaches the stages (onnx, torch): imported when the command runs, so --help starts at once.
    from pipeline.sweep import as_list, cluster, connection

    cluster.require_ray()
    host, port = connection.split_address(address)
    resources = cluster.worker_resources(as_list(targets), num_cpus)
    if not resources:
        raise EdgepipeError(
            "this machine has no NVIDIA GPU and no TensorRT-RTX, so it serves no target",
            fix="install TensorRT-RTX (pip install 'edgepipe[rtx]') to build ahead of time, or pass --targets sm_XY",
        )
    address = f"{host}:{port}"
    command = ["ray", "start", "--address", address, "--resources", json.dumps(resources, sort_keys=True), "--block"]
    command += [f"--num-cpus={num_cpus}"] if num_cpus else []
    command += [f"--temp-dir={temp_dir}"] if temp_dir else []
    result = {"address": address, "resources": resources, "command": command, "started": not dry_run}
    if dry_run:
        emit(result, as_json, lambda r: out.print(" ".join(shlex.quote(c) for c in r["command"]), soft_wrap=True))
        return
    connection.check_reachable(host, port)
    advertised = ", ".join(f"{k}: {v:g}" for k, v in resources.items())
    emit(result, as_json, lambda r: click.echo(f"Joining {r['address']} advertising {advertised}", err=True))
    sys.stdout.flush()
    # The same interpreter's Ray, in this process: signals (Ctrl-C, kill PID) reach 'ray start' directly.
    os.execv(sys.executable, [sys.executable, "-m", "ray.scripts.scripts", *command[1:]])

import json
import os
import sys

import click

from pipeline.clitools import EdgepipeCommand, emit, json_option
from pipeline.errors import EdgepipeError
from pipeline.progress import out

# pipeline.sweep and pipeline.cluster import ray only when a command runs; importing them here is light.


@click.command("sweep", cls=EdgepipeCommand)
@click.option("--models", default=None, metavar="A,B", help="Zoo models to sweep, comma-separated.")
@click.option("--models-file", type=click.Path(dir_okay=False), default=None, metavar="sweep.yaml",
              help="YAML with 'models:' (names, or {name, checkpoint|onnx, epochs}) and optional 'precisions:'/'targets:'.")
@click.option("--precisions", default=None, metavar="fp32,fp16,int8", help="Precisions to build (default: fp32,fp16,int8).")
@click.option("--targets", default=None, metavar="sm_89,sm_87", help="Target GPUs by compute capability (default: every target a worker advertises).")
@click.option("-o", "--output", default="runs/sweep", show_default=True, metavar="DIR", help="Sweep directory: sweep.json, sweep.md and one run directory per model.")
@click.option("--address", default="local", show_default=True, metavar="local|auto|HOST:PORT",
              help="local: embedded Ray on this machine (nothing to start); auto: the cluster running here (e.g. under 'ray job submit'); HOST:PORT: a cluster's head.")
@click.option("--data", default=None, metavar="digits|DIR|FILE.npz", help="Dataset (default: digits). GPU workers that validate need it at the same path.")
@click.option("--epochs", type=int, default=None, help="Training epochs (default: each model's recipe).")
@click.option("--seed", default=0, show_default=True)
@click.option("--max-drop", default="0.5", show_default=True, metavar="PTS|none", help="INT8 accuracy budget in points of top-1 ('none': plain PTQ).")
@click.option("--batches", default="1,8", show_default=True, help="Batch sizes to bench.")
@click.option("--bench-seconds", default=1.0, show_default=True, help="Timed seconds per artifact and batch.")
@click.option("--retries", default=2, show_default=True, help="Retries of a cell whose worker or node dies (a build error is never retried).")
@click.option("--strict", is_flag=True, help="Stop the sweep at the first failure instead of recording it and going on.")
@click.option("--force", is_flag=True, help="Redo every stage and rebuild every engine, even those that are current.")
@json_option
def sweep_command(models, models_file, precisions, targets, output, address, data, epochs, seed, max_drop, batches, bench_seconds, retries, strict, force, as_json):
    """Build and measure every model x precision x target GPU, fanned out on Ray.

    Each model's target-independent stages run once on this machine (into DIR/<model>/, as
    'edgepipe run' does); each engine is built on a worker that advertises its target (Ray resource
    sm_XY), and validated and benched there when that worker has the GPU. Unchanged engines are
    reused, so a second sweep submits nothing. Exits 1 if a cell or a model failed.

    \b
    Example (embedded Ray: this machine builds the TensorRT-RTX targets ahead of time):
      edgepipe sweep --models se_resnet,cbam_resnet --precisions fp16,int8 --targets sm_89,sm_86 -o runs/sweep
    Example (a cluster; GPU machines joined with 'edgepipe worker --address HEAD:6379'):
      edgepipe sweep --models-file sweep.yaml --targets sm_89,sm_87,sm_80 --address HEAD:6379
    """
    from pipeline import sweep as sweepmod

    if not models and not models_file:
        raise EdgepipeError("no model to sweep", fix="pass --models A,B or --models-file sweep.yaml")
    report = sweepmod.sweep(
        models=_split(models), models_file=models_file, precisions=_split(precisions), targets=_split(targets),
        output=output, address=address, data=data, epochs=epochs, seed=seed, max_drop=_budget(max_drop),
        bench_batches=_batches(batches), bench_seconds=bench_seconds, strict=strict, force=force, retries=retries,
    )
    emit(report, as_json, _print)
    if not report["ok"]:
        raise click.exceptions.Exit(1)


def _split(text):
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _budget(text: str):
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise EdgepipeError(f"--max-drop '{text}' is not a number of points", fix="pass e.g. --max-drop 0.5, or --max-drop none for plain PTQ")
    return value


def _batches(text: str):
    try:
        values = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise EdgepipeError(f"--batches '{text}' is not a list of batch sizes", fix="pass e.g. --batches 1,8,32")
    return values


def _print(report) -> None:
    from pipeline.sweep_report import to_markdown

    click.echo(to_markdown(report).split("\n## Models")[0])
    click.echo(f"Report: {report['folder']}/sweep.md and sweep.json")


@click.command("worker", cls=EdgepipeCommand)
@click.option("--address", required=True, metavar="HEAD:PORT", help="The head's address ('ray start --head' prints it; port 6379 by default).")
@click.option("--targets", default=None, metavar="sm_89,...",
              help="Targets to advertise (default: this GPU; without a GPU, the TensorRT-RTX targets built ahead of time).")
@click.option("--num-cpus", type=int, default=None, help="CPUs Ray may use here (default: all).")
@click.option("--temp-dir", default=None, metavar="DIR", help="Ray's temporary directory on this machine.")
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
    from pipeline import cluster

    cluster.require_ray()
    host, port = cluster.split_address(address)
    resources = cluster.worker_resources(_split(targets), num_cpus)
    if not resources:
        raise EdgepipeError("this machine has no NVIDIA GPU and no TensorRT-RTX, so it serves no target",
                            fix="install TensorRT-RTX (pip install 'edgepipe[rtx]') to build ahead of time, or pass --targets sm_XY")
    command = ["ray", "start", "--address", f"{host}:{port}", "--resources", json.dumps(resources, sort_keys=True), "--block"]
    command += [f"--num-cpus={num_cpus}"] if num_cpus else []
    command += [f"--temp-dir={temp_dir}"] if temp_dir else []
    result = {"address": f"{host}:{port}", "resources": resources, "command": command, "started": not dry_run}
    if dry_run:
        emit(result, as_json, lambda r: out.print(" ".join(_quote(c) for c in r["command"]), markup=False, soft_wrap=True))
        return
    cluster.check_reachable(host, port)
    emit(result, as_json, lambda r: click.echo(f"Joining {r['address']} advertising {', '.join(f'{k}: {v:g}' for k, v in resources.items())}", err=True))
    sys.stdout.flush()
    # The same interpreter's Ray, in this process: signals (Ctrl-C, kill PID) reach 'ray start' directly.
    os.execv(sys.executable, [sys.executable, "-m", "ray.scripts.scripts", *command[1:]])


def _quote(part: str) -> str:
    import shlex

    return shlex.quote(part)


COMMANDS = [sweep_command, worker_command]

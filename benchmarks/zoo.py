"""Train every zoo model on the bundled digits with its default recipe; write docs/zoo.md.

    python benchmarks/zoo.py [--models se_resnet,eca_resnet] [--out docs/zoo.md] [--keep runs/zoo]

Each row: attention, parameters, MACs, epochs, training seconds on this machine, held-out top-1
(target >= 98.0% in <= 180 s on 2 CPU cores). Checkpoints are kept with --keep for the
precision benchmark (benchmarks/precision.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from pipeline import train  # noqa: E402
from pipeline.checkpoint import save_checkpoint  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(models.names()))
    parser.add_argument("--out", default="docs/zoo.md")
    parser.add_argument("--keep", default=None, help="folder to keep the checkpoints in")
    args = parser.parse_args()

    rows = []
    for name in args.models.split(","):
        net, config = train.train(name, progress=False)
        if args.keep:
            save_checkpoint(Path(args.keep) / f"{name}.pt", net, config, force=True)
        info = models.model_info(name)
        figures = config["train"]
        ok = figures["val_top1"] >= 98.0 and figures["seconds"] <= 180
        rows.append(
            f"| {name} | {info['attention']} | {models.count_params(net):,} | {models.count_macs(net, (1, 1, 32, 32)) / 1e6:.1f} M | "
            f"{figures['epochs']} | {figures['seconds']:.0f} | {figures['val_top1']:.2f} | {'yes' if ok else 'NO'} |"
        )
        print(rows[-1], flush=True)
    header = [
        "# Model zoo on digits",
        "",
        f"Produced by `python benchmarks/zoo.py` on {platform.machine()} with {os.cpu_count()} CPU cores. "
        "Held-out split: 359 of the 1,797 images (20%, stratified, seed 0); inputs 1x32x32.",
        "",
        "| model | attention | params | MACs | epochs | train s | held-out top-1 (%) | meets target (>= 98.0%, <= 180 s) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(header + rows) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

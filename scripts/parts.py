"""Split a file into parts small enough to travel, and join them back, checked by sha256.

    python3 scripts/parts.py split FILE --max-mib 50 --dest .gpu     # FILE.partN into .gpu/p1, .gpu/p2, ...
    python3 scripts/parts.py join .gpu/p1/FILE.parts.json --search DIR... --out DIR

``split`` writes ``NAME.parts.json`` (the whole file's name, size and sha256, and each part's) into
every part's folder, so whichever folder arrives first can say what is still missing. ``join``
checks each part and the joined file against it and writes the file atomically (temporary name,
then rename), so a bad or missing part leaves nothing behind. Standard library only: it runs on the
preparing machine and on a bare GPU machine alike.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def split(path: Path, max_bytes: int, dest: Path, first_max_bytes: int | None = None) -> Path:
    """Parts of ``path`` (part N in ``dest/pN``); the first at most ``first_max_bytes``. The manifest's path."""
    size = path.stat().st_size
    limits = [first_max_bytes or max_bytes]
    while sum(limits) < size:
        limits.append(max_bytes)
    parts = []
    with open(path, "rb") as f:
        for number, limit in enumerate(limits, start=1):
            folder = dest / f"p{number}"
            folder.mkdir(parents=True, exist_ok=True)
            part = folder / f"{path.name}.part{number}"
            with open(part, "wb") as out:
                remaining = limit
                while remaining and (block := f.read(min(CHUNK, remaining))):
                    out.write(block)
                    remaining -= len(block)
            parts.append(
                {"file": part.name, "folder": folder.name, "bytes": part.stat().st_size, "sha256": sha256_of(part)}
            )
    manifest = {"name": path.name, "bytes": size, "sha256": sha256_of(path), "parts": parts}
    for entry in parts:
        (dest / entry["folder"] / f"{path.name}.parts.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return dest / "p1" / f"{path.name}.parts.json"


def join(manifest_path: Path, search: list[Path], out: Path) -> Path:
    """The whole file in ``out``, from parts found in ``search``; SystemExit naming the bad part otherwise."""
    manifest = json.loads(manifest_path.read_text())
    target = out / manifest["name"]
    if target.is_file() and sha256_of(target) == manifest["sha256"]:
        return target
    found = []
    for entry in manifest["parts"]:
        candidates = [folder / entry["file"] for folder in search if (folder / entry["file"]).is_file()]
        if not candidates:
            raise SystemExit(f"parts: {entry['file']} is missing (looked in {', '.join(map(str, search))})")
        if sha256_of(candidates[0]) != entry["sha256"]:
            raise SystemExit(f"parts: {candidates[0]} does not match its sha256 in {manifest_path}")
        found.append(candidates[0])
    out.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".joining")
    with open(partial, "wb") as f:
        for part in found:
            with open(part, "rb") as src:
                for block in iter(lambda: src.read(CHUNK), b""):
                    f.write(block)
    if sha256_of(partial) != manifest["sha256"]:
        partial.unlink()
        raise SystemExit(f"parts: the joined {manifest['name']} does not match its sha256 {manifest['sha256']}")
    os.replace(partial, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="split FILE into parts in DEST/p1, DEST/p2, ...")
    s.add_argument("file", type=Path)
    s.add_argument("--max-mib", type=float, required=True, help="largest part, in MiB")
    s.add_argument("--first-max-mib", type=float, help="largest first part, in MiB (default: --max-mib)")
    s.add_argument("--dest", type=Path, required=True)
    j = sub.add_parser("join", help="join the parts a manifest names, checking every sha256")
    j.add_argument("manifest", type=Path)
    j.add_argument("--search", type=Path, nargs="+", required=True, help="folders that may hold the parts")
    j.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "split":
        first = int(args.first_max_mib * 2**20) if args.first_max_mib else None
        print(split(args.file, int(args.max_mib * 2**20), args.dest, first))
    else:
        print(join(args.manifest, args.search, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

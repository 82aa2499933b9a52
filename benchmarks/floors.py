"""How many floors edgepipe's code really has, measured from its import graph.

The graph is every import among the modules of pipeline/, calibration/ and models/, those inside
functions included (grimp, which import-linter uses, reads both). A package that the floors
contract in pyproject.toml names as one layer (``pipeline.quantize``, ``pipeline.runtime``, ...)
counts as one module, as import-linter's layers count it. The number of floors is the longest
import chain, in modules, each counted once: the fewest floors a layers contract that says the
order the code really has can have. A cycle (modules that reach each other) is one node, reported.

    python benchmarks/floors.py            # floors, the longest chain, and each module's floor
    python benchmarks/floors.py --json     # the same as one JSON object
    python benchmarks/floors.py --max 12   # exit 1 when there are more than 12 floors
    python benchmarks/floors.py --contract # the layers of a floors contract saying exactly this order

The contract it prints joins modules of one floor with "|" (they do not import each other, or they
would stand on different floors): no sideways ":" group hides an import that runs the other way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grimp

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOTS = ("pipeline", "calibration", "models")
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def layer_packages(pyproject: Path = PYPROJECT) -> list[str]:
    """The packages the floors contract names as whole layers (the ones with submodules)."""
    config = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]
    floors = next(c for c in config["contracts"] if c["id"] == "floors")
    names = {name.strip() for layer in floors["layers"] for name in layer.replace("|", ":").split(":")}
    return sorted(names)


def module_graph(packages: list[str]) -> dict[str, set[str]]:
    """{module: modules it imports}, with the modules of each layer package collapsed into the package."""
    graph = grimp.build_graph(*ROOTS, cache_dir=None)
    packages = [p for p in packages if graph.find_children(p)] if packages else []

    def node(module: str) -> str:
        return next((p for p in packages if module == p or module.startswith(p + ".")), module)

    edges: dict[str, set[str]] = {node(m): set() for m in graph.modules}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if node(imported) != node(module):
                edges[node(module)].add(node(imported))
    return edges


def components(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan): a cycle is one component of several modules."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                members.append(w)
                if w == v:
                    break
            found.append(sorted(members))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def floors(edges: dict[str, set[str]]) -> dict:
    """Each module's floor (1 + the highest floor it imports), the longest chain and any cycles."""
    comps = components(edges)
    owner = {m: i for i, comp in enumerate(comps) for m in comp}
    below = {i: {owner[w] for m in comp for w in edges[m]} - {i} for i, comp in enumerate(comps)}
    height: dict[int, int] = {}
    for i in range(len(comps)):  # Tarjan emits a component after every component it reaches
        height[i] = len(comps[i]) + max((height[j] for j in below[i]), default=0)
    top = max(height, key=lambda i: height[i])
    chain, i = [], top
    while True:
        chain.extend(comps[i])
        if not below[i]:
            break
        i = max(below[i], key=lambda j: height[j])
    by_floor: dict[int, list[str]] = {}
    for i, comp in enumerate(comps):
        by_floor.setdefault(height[i], []).extend(comp)
    return {
        "floors": height[top],
        "longest_chain": chain,
        "cycles": [comp for comp in comps if len(comp) > 1],
        "layers": {floor: sorted(mods) for floor, mods in sorted(by_floor.items(), reverse=True)},
    }


def contract(layers: dict[int, list[str]]) -> str:
    """The ``layers = [...]`` of an import-linter layers contract, top floor first, one floor a line."""
    lines = []
    for floor, mods in layers.items():
        mods = [m for m in mods if m not in ("pipeline",)]  # the root package holds every layer
        if mods:
            lines.append(f'    "{" | ".join(mods)}",  # {floor}')
    return "layers = [\n" + "\n".join(lines) + "\n]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--max", type=int, default=None, help="exit 1 when there are more floors than this")
    parser.add_argument("--contract", action="store_true", help="print the layers of a contract saying this order")
    parser.add_argument("--modules", action="store_true", help="count every module alone (no package collapsed)")
    args = parser.parse_args()
    result = floors(module_graph([] if args.modules else layer_packages()))
    if args.contract:
        print(contract(result["layers"]))
    elif args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"floors: {result['floors']}")
        print("longest chain: " + " -> ".join(result["longest_chain"]))
        for comp in result["cycles"]:
            print("cycle: " + " <-> ".join(comp))
        for floor, mods in result["layers"].items():
            print(f"{floor:>3}  {', '.join(mods)}")
    return 1 if args.max is not None and result["floors"] > args.max else 0


if __name__ == "__main__":
    sys.exit(main())

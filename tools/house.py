"""Print the shape of the house: import circles, private names imported across modules, module sizes.

Every import in ``tlviz/`` counts, module-level and function-level alike. Run::

    python tools/house.py            # a report; exit status 1 when a rule is broken
    python tools/house.py --json     # the same as data

Rules checked (docs/layout.md states them):

* no import circle among ``tlviz/`` modules;
* no ``_private`` name imported from another package (inside one package a shared helper is public);
* no module in ``tlviz/`` or ``ui/`` over ``MAX_LINES`` lines.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 600


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules(package: str = "tlviz", root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(known: dict[str, Path]) -> list[tuple[str, str, str | None, int]]:
    """Every (importer, imported module, imported name or None, line) among the known modules."""
    edges = []
    for mod, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_pkg = path.name == "__init__.py"
        bound: dict[str, str] = {}  # a local name bound to a tlviz module
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = _longest_known(alias.name, known)
                    if target:
                        edges.append((mod, target, None, node.lineno))
                        if alias.asname:
                            bound[alias.asname] = target
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(mod, is_pkg, node)
                for alias in node.names:
                    full = f"{src}.{alias.name}"
                    if full in known:  # `from pkg import submodule`
                        edges.append((mod, full, None, node.lineno))
                        bound[alias.asname or alias.name] = full
                        continue
                    target = _longest_known(src, known)
                    if target:
                        edges.append((mod, target, alias.name, node.lineno))
        for node in ast.walk(tree):  # `module._name` through a bound module name
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                edges.append((mod, bound[node.value.id], node.attr, node.lineno))
    return edges


def _longest_known(name: str, known: dict[str, Path]) -> str | None:
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in known:
            return cand
        parts.pop()
    return None


def circles(edges) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    graph: dict[str, set[str]] = {}
    for a, b, _name, _line in edges:
        if a == b or _is_parent_package(b, a):
            continue  # a package's __init__ re-exporting, or a module importing its own package
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        work = [(v, iter(sorted(graph[v])))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    advanced = True
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(out)


def _is_parent_package(parent: str, child: str) -> bool:
    return child.startswith(parent + ".")


def _package(mod: str, known: dict[str, Path]) -> str:
    path = known[mod]
    return mod if path.name == "__init__.py" else mod.rpartition(".")[0]


def private_imports(edges, known) -> tuple[list[tuple], list[tuple]]:
    """(all private-name imports across modules, those across packages)."""
    across_modules, across_packages = [], []
    for a, b, name, line in edges:
        if not name or not name.startswith("_") or name.startswith("__") or a == b:
            continue
        row = (a, b, name, line)
        across_modules.append(row)
        if _package(a, known) != _package(b, known):
            across_packages.append(row)
    return across_modules, across_packages


def sizes(packages=("tlviz", "ui")) -> dict[str, int]:
    out = {}
    for pkg in packages:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out[str(path.relative_to(ROOT))] = len(path.read_text(encoding="utf-8").splitlines())
    return out


def report() -> dict:
    known = modules("tlviz")
    edges = imports(known)
    priv, priv_pkg = private_imports(edges, known)
    size = sizes()
    return {
        "modules": len(known),
        "circles": circles(edges),
        "private_imports": len(priv),
        "private_across_packages": [f"{a} imports {b}.{n} (line {ln})" for a, b, n, ln in priv_pkg],
        "over_limit": {p: n for p, n in size.items() if n > MAX_LINES},
        "largest": dict(sorted(size.items(), key=lambda kv: -kv[1])[:10]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rep = report()
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print(f"{rep['modules']} modules in tlviz/")
        print(f"import circles: {len(rep['circles'])}")
        for comp in rep["circles"]:
            print("  " + " <-> ".join(comp))
        print(f"private names imported from another module: {rep['private_imports']}")
        print(f"  of them across packages: {len(rep['private_across_packages'])}")
        for line in rep["private_across_packages"]:
            print("    " + line)
        print(f"modules over {MAX_LINES} lines: {len(rep['over_limit'])}")
        for p, n in rep["over_limit"].items():
            print(f"  {p}: {n}")
    broken = rep["circles"] or rep["private_across_packages"] or rep["over_limit"]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())

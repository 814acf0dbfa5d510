#!/usr/bin/env python3
"""Who imports whom in plugin/: a table by package, and a check that no import goes up the layers
and that no modules import each other in a cycle (imports under `if TYPE_CHECKING:` are types
only and listed apart; an import inside a function counts: it runs).

    python3 scripts/layers.py [ROOT]          the table (ROOT: a checkout, default this one)
    python3 scripts/layers.py --check [ROOT]  exit 1 naming each upward edge or cycle
    python3 scripts/layers.py --sizes [ROOT]  the largest files and functions
"""

from __future__ import annotations

import ast
import os
import sys
from collections import defaultdict

# top to bottom: a package may import only from packages of a greater rank (or its own)
RANKS = {
    "__main__": 0,
    "server": 0,  # the process: gunicorn's app, restore at start
    "app": 1,  # HTTP
    "protocol": 2,  # request parsing, routes, call counters
    "wiring": 3,  # composition root
    "metrics": 4,  # reads what the wiring built, through Protocols
    "cluster": 4,
    "dns": 4,  # services beside the use cases (cluster: their hooks)
    "driver": 5,
    "docker": 5,
    "config": 5,  # use cases; Docker's API and inventory; settings
    "ipam": 6,  # pools and addresses
    "store": 7,
    "kernel": 7,  # state; adapters to the kernel
    "domain": 8,  # values, parsing, naming, errors
}


def modules(root: str) -> dict[str, str]:
    out = {}
    base = os.path.join(root, "plugin")
    for d, _, files in os.walk(base):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(d, f)
    return out


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(root: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """module -> modules it imports at run time, and those it imports for types only."""
    mods = modules(root)
    run: dict[str, set[str]] = defaultdict(set)
    types: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        tree = ast.parse(open(path).read())
        typing_only = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                typing_only.update(id(n) for b in node.body for n in ast.walk(b))
        is_pkg = path.endswith("__init__.py")
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    here = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = here[: len(here) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:  # `from . import codec` names a module
                    sub = f"{target}.{alias.name}"
                    targets.append(sub if sub in mods else target)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t.split(".")[0] == "plugin" and t != mod:
                    (types if id(node) in typing_only else run)[mod].add(t)
    return run, types


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def problems(root: str) -> list[str]:
    run, types = imports(root)
    out = []
    for mod in sorted(set(run) | set(types)):
        src = package(mod)
        for t in sorted(run.get(mod, set()) | types.get(mod, set())):
            dst = package(t)
            if src == "__init__" or dst == "__init__" or src == dst:
                continue
            if src not in RANKS or dst not in RANKS:
                out.append(f"{mod} -> {t}: package {src if src not in RANKS else dst} has no layer in RANKS")
            elif RANKS[dst] < RANKS[src]:
                out.append(f"{mod} -> {t}: up the layers ({src} {RANKS[src]} imports {dst} {RANKS[dst]})")
    for comp in cycles(run):
        out.append("cycle: " + " -> ".join(comp))
    pkg_graph: dict[str, set[str]] = defaultdict(set)  # types-only imports count here too
    for mod in set(run) | set(types):
        for t in run.get(mod, set()) | types.get(mod, set()):
            if package(t) != package(mod):
                pkg_graph[package(mod)].add(package(t))
    for comp in cycles(pkg_graph):
        out.append("package cycle: " + " -> ".join(comp))
    return out


def table(root: str) -> str:
    run, types = imports(root)
    by_pkg: dict[str, set[str]] = defaultdict(set)
    by_pkg_types: dict[str, set[str]] = defaultdict(set)
    for mod in set(run) | set(types):
        for t in run.get(mod, ()):
            if package(t) != package(mod):
                by_pkg[package(mod)].add(package(t))
        for t in types.get(mod, ()):
            if package(t) != package(mod):
                by_pkg_types[package(mod)].add(package(t))
    pkgs = sorted(set(by_pkg) | set(by_pkg_types) | set(RANKS), key=lambda p: (RANKS.get(p, 99), p))
    lines = ["| layer | package | imports | for types only |", "|---|---|---|---|"]
    for p in pkgs:
        if p == "__init__":
            continue
        only = sorted(by_pkg_types[p] - by_pkg[p])
        lines.append(
            f"| {RANKS.get(p, '?')} | {p} | {', '.join(sorted(by_pkg[p], key=lambda q: RANKS.get(q, 99))) or '-'} "
            f"| {', '.join(only) or ''} |"
        )
    return "\n".join(lines)


def sizes(root: str, n: int = 8) -> str:
    files, funcs = [], []
    for mod, path in modules(root).items():
        text = open(path).read()
        files.append((text.count("\n"), mod))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
                funcs.append((node.end_lineno - node.lineno + 1, f"{mod}.{node.name}"))
    files.sort(reverse=True)
    funcs.sort(reverse=True)
    return (
        "files: " + ", ".join(f"{m} {c}" for c, m in files[:n]) + "\n"
        "functions: " + ", ".join(f"{m} {c}" for c, m in funcs[:n])
    )


def main(argv: list[str]) -> int:
    flags = [a for a in argv if a.startswith("--")]
    args = [a for a in argv if not a.startswith("--")]
    root = args[0] if args else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if "--check" in flags:
        found = problems(root)
        for p in found:
            print(p)
        return 1 if found else 0
    print(sizes(root) if "--sizes" in flags else table(root))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

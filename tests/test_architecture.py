"""The package's structure: imports only go down the layers, no circles, no private names across
modules, no module over 500 lines, no sys.path edits. Parsed from the source (nothing imported).

Layers, bottom up (a module may import its own package and any lower layer, never a higher one or
another package of its own layer):

    0  config, progress, files, locks
    1  core, data, configs
    2  io, extract
    3  training
    4  analysis
    5  interventions
    6  toy, perf, paper
    7  demo, dashboard
    8  cli

Function-local imports count like module-level ones: a lazy import that dodges a circle or runs
back up the layers is caught the same way. A control builds a circle and an upward import into a
copy of the rules and checks that both are found.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "jaxcoders"

LAYERS = {
    "config": 0, "progress": 0, "files": 0, "locks": 0,
    "core": 1, "data": 1, "configs": 1,
    "io": 2, "extract": 2,
    "training": 3,
    "analysis": 4,
    "interventions": 5,
    "toy": 6, "perf": 6, "paper": 6,
    "demo": 7, "dashboard": 7,
    "cli": 8,
}
MAX_LINES = 500


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _room(module: str) -> str | None:
    """The layer key of a module: the first package below jaxcoders (or the top-level module)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None  # jaxcoders/__init__.py: lazy re-exports by name only
    return parts[1]


def _resolve(module: str, node: ast.ImportFrom, is_pkg: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(modules: dict[str, Path]) -> dict[str, list[tuple[str, list[str], int]]]:
    """module -> [(imported jaxcoders module, names taken, line)], module-level and function-local."""
    out = {}
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("jaxcoders"):
                        edges.append((a.name, [], node.lineno))
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, node, is_pkg)
                if not target or not target.startswith("jaxcoders"):
                    continue
                names = [a.name for a in node.names]
                # `from jaxcoders.x import y` where y is a submodule: the edge goes to the submodule
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
                if subs:
                    edges += [(s, [], node.lineno) for s in subs]
                    names = [n for n in names if f"{target}.{n}" not in modules]
                    if not names:
                        continue
                edges.append((target, names, node.lineno))
        out[mod] = edges
    return out


def _target_module(name: str, modules) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def layer_violations(graph, modules, layers=LAYERS) -> list[str]:
    bad = []
    for mod, edges in graph.items():
        src = _room(mod)
        if src is None:
            continue
        for target, _, line in edges:
            tmod = _target_module(target, modules)
            dst = _room(tmod) if tmod else None
            if dst is None or dst == src:
                continue
            if src not in layers or dst not in layers:
                bad.append(f"{mod}:{line} -> {target}: package {src if src not in layers else dst!r} has no layer")
            elif layers[dst] >= layers[src]:
                bad.append(f"{mod}:{line} imports {target} ({dst}, layer {layers[dst]}) from layer {layers[src]}")
    return bad


def circles(graph, modules) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    adj = {m: sorted({_target_module(t, modules) for t, _, _ in e} - {None, m}) for m, e in graph.items()}
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in adj.get(v, []):
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

    for v in sorted(adj):
        if v not in index:
            visit(v)
    return out


def private_imports(graph, modules) -> list[str]:
    bad = []
    for mod, edges in graph.items():
        for target, names, line in edges:
            tmod = _target_module(target, modules)
            if tmod == mod:
                continue
            bad += [f"{mod}:{line} imports private {n} from {target}" for n in names if n.startswith("_")
                    and not n.startswith("__")]
            if any(p.startswith("_") and not p.startswith("__") for p in target.split(".")):
                bad.append(f"{mod}:{line} imports private module {target}")
    return bad


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return modules, imports_of(modules)


def test_no_circles(graph):
    modules, g = graph
    assert circles(g, modules) == []


def test_imports_only_go_down_the_layers(graph):
    modules, g = graph
    assert layer_violations(g, modules) == []
    rooms = {_room(m) for m in modules} - {None}
    assert rooms <= set(LAYERS), f"packages without a layer: {rooms - set(LAYERS)}"


def test_no_private_names_across_modules(graph):
    modules, g = graph
    assert private_imports(g, modules) == []


def test_no_module_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_sys_path_edits():
    hits = []
    for base in ("jaxcoders", "experiments", "tests", "tpu"):
        for p in (ROOT / base).rglob("*.py"):
            text = p.read_text()
            if "sys.path.insert" in text or "sys.path.append" in text:
                hits.append(str(p.relative_to(ROOT)))
    assert hits == ["tests/test_architecture.py"]  # only this file, which names the calls it looks for


def test_control_a_circle_and_an_upward_import_are_found(tmp_path):
    """The checks above must be able to fail: a fake package with core -> training -> core."""
    pkg = tmp_path / "jaxcoders"
    (pkg / "core").mkdir(parents=True)
    (pkg / "training").mkdir()
    for d in (pkg, pkg / "core", pkg / "training"):
        (d / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from jaxcoders.training.b import g, _h\n")
    (pkg / "training" / "b.py").write_text("from jaxcoders.core.a import f\n")
    modules = {_module_name_in(p, tmp_path): p for p in sorted(pkg.rglob("*.py"))}
    g = imports_of(modules)
    assert circles(g, modules) == [["jaxcoders.core.a", "jaxcoders.training.b"]]
    assert [v.split(":")[0] for v in layer_violations(g, modules)] == ["jaxcoders.core.a"]
    assert private_imports(g, modules) == ["jaxcoders.core.a:2 imports private _h from jaxcoders.training.b"]


def _module_name_in(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

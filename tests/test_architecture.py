"""The architecture's rules, read from the code's own imports (every import, at the top of a module or
inside a function): the layers of docs/design.md, the product (askexpert) apart from the lab (askexpert_lab),
the torch-free contract, run time apart from build time, and no import circle among the modules of either."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "askexpert"  # the product: what `pip install askexpert` installs
LAB = ROOT / "lab" / "src" / "askexpert_lab"  # the lab: what measures it (askexpert-lab)

# docs/design.md, "Layers": a module imports from its own layer or the ones below, never from above
LAYERS = [
    {"askexpert", "errors", "paths", "splits", "console", "devices"},
    {"security", "imageio", "corruptions", "extensions"},
    {"contract"},
    {"routing", "config", "costs"},
    {"data"},
    {"models"},
    {"runtime", "serving"},  # run time sits below build time: nothing it imports can reach training
    {"training"},
    {"system"},
    {"cli", "__main__"},
    # the lab, above the whole product: it imports the product, never the reverse
    {"lab", "lab.han", "lab.server_pacing"},
    {"lab.testbed"},
    {"lab.bench"},
    {"lab.demo"},
    {"lab.cli"},
]
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}
HEAVY = {"torch", "torchvision", "timm", "safetensors", "fastapi", "starlette", "uvicorn", "ray"}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in [*SRC.rglob("*.py"), *LAB.rglob("*.py")]:
        top = SRC if path.is_relative_to(SRC) else LAB
        parts = list(path.relative_to(top.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports (``from package import submodule`` names the submodule)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            names |= subs or {node.module}
    return names


def _part(module: str) -> str:
    """The package (or top-level module) of ``askexpert.<part>...``; ``askexpert`` itself for the package;
    ``lab.<part>`` for ``askexpert_lab.<part>...`` and ``lab`` for the lab's package."""
    parts = module.split(".")
    if parts[0] == "askexpert_lab":
        return "lab" if len(parts) == 1 else f"lab.{parts[1]}"
    return parts[1] if len(parts) > 1 else parts[0]


def _product(module: str) -> bool:
    return module.split(".")[0] == "askexpert"


GRAPH = {m: {t for t in _imported(p) if t in MODULES and t != m} for m, p in MODULES.items()}


def test_the_product_never_imports_the_lab():
    """No module of the product imports the lab, at its top or inside a function (what a lab flag needs it
    finds through an entry point, askexpert.extensions); so `pip install askexpert` works without the lab."""
    product = [m for m in MODULES if _product(m)]
    assert len(product) > 100 and len(MODULES) - len(product) > 30  # both packages were found
    bad = sorted(f"{m} -> {t}" for m in product for t in _imported(MODULES[m]) if t.split(".")[0] == "askexpert_lab")
    assert not bad, bad


def test_every_module_has_a_layer():
    assert not {_part(m) for m in MODULES} - RANK.keys(), "give the new package a layer here and in docs/design.md"


def test_no_import_runs_against_the_layers():
    against = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                     if RANK[_part(t)] > RANK[_part(m)])
    assert not against, against


def test_askexpert_has_no_import_circle():
    """Tarjan's strongly connected components over the module graph: every one a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for t in GRAPH[m]:
            if t not in index:
                visit(t)
                low[m] = min(low[m], low[t])
            elif t in on_stack:
                low[m] = min(low[m], index[t])
        if low[m] == index[m]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == m:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for m in sorted(GRAPH):
        if m not in index:
            visit(m)
    assert not circles, circles


def test_the_contract_imports_neither_torch_nor_build_time():
    """The contract is what an edge device installs: pydantic and NumPy, no torch, nothing that trains."""
    for m in (m for m in MODULES if _part(m) == "contract"):
        imported = _imported(MODULES[m])
        heavy = {n for n in imported if n.split(".")[0] in HEAVY}
        ours = {_part(n) for n in imported if n.startswith("askexpert.")} - {"contract", "errors", "security"}
        assert not heavy and not ours, f"{m} imports {heavy | ours}"


def reaches(module: str) -> set[str]:
    """Every askexpert module ``module`` imports, directly or through others (lazy imports included)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for t in GRAPH[todo.pop()] - seen:
            seen.add(t)
            todo.append(t)
    return seen


BUILD_TIME = {"training", "system", "cli"} | {p for layer in LAYERS for p in layer if p.startswith("lab")}


def test_run_time_never_reaches_build_time():
    """The edge (runtime), the server (serving) and the contract between them reach nothing that trains,
    builds, benches or emulates, through any chain of imports."""
    for m in (m for m in MODULES if _part(m) in ("runtime", "serving", "contract")):
        bad = sorted(t for t in reaches(m) if _part(t) in BUILD_TIME)
        assert not bad, f"{m} reaches {bad}"


def test_runtime_and_serving_stand_side_by_side():
    """Neither half of run time imports the other: the edge needs no server code, the server no edge code."""
    for m in (m for m in MODULES if _part(m) in ("runtime", "serving")):
        other = "serving" if _part(m) == "runtime" else "runtime"
        assert not {t for t in GRAPH[m] if _part(t) == other}, f"{m} imports {other}"


RUN_TIME = ("contract", "routing", "runtime", "serving")


def _module_state(tree: ast.Module) -> list[str]:
    """What a module keeps as state at run time: ``global`` statements, and (at its top level) names bound to
    an empty dict, list or set, a container to be filled as it runs."""
    found = [f"global {', '.join(n.names)} (line {n.lineno})" for n in ast.walk(tree) if isinstance(n, ast.Global)]
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        empty = (isinstance(value, ast.Dict | ast.List | ast.Set) and not getattr(value, "keys", getattr(value, "elts",
                                                                                                         None))
                 or isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                 and value.func.id in ("dict", "list", "set") and not value.args)
        if empty:
            found.append(f"an empty container at line {node.lineno}")
    return found


def test_run_time_keeps_no_module_state():
    """The deployed edge and server hold no state in their modules (an emulated edge's pacing is an object
    passed to the model and the client, not a module's setting); no module anywhere rebinds a global."""
    for m, path in MODULES.items():
        state = _module_state(ast.parse(path.read_text()))
        if _part(m) not in RUN_TIME:
            state = [s for s in state if s.startswith("global")]
        assert not state, f"{m}: {state}"
    assert _module_state(ast.parse("_f = 1.0\n_d: dict = {}\ndef set_f(x):\n    global _f\n    _f = x\n")) == [
        "global _f (line 4)", "an empty container at line 2"]


def test_every_package_has_an_init():
    """Every folder of askexpert's code is a package, with a docstring that says what it holds."""
    folders = [*SRC.rglob("*"), *LAB.rglob("*"), LAB]
    for folder in (p for p in folders if p.is_dir() and p.name != "__pycache__" and any(p.glob("*.py"))):
        init = folder / "__init__.py"
        assert init.is_file(), f"{folder} has no __init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"


def test_the_rule_checks_see_a_violation(tmp_path):
    """The checks are not vacuous: an import of training from the contract is seen as one, and a chain of
    imports is followed to its end."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from askexpert.training.engine import fit\n")
    assert "askexpert.training.engine" in _imported(bad)
    assert RANK[_part("askexpert.training.engine")] > RANK[_part("askexpert.contract.schema")]
    chain = reaches("askexpert.system.build")
    assert "askexpert.models.checkpoint" in chain and "askexpert.errors" in chain  # through calibrate and models
    bad.write_text("def f():\n    from askexpert_lab.testbed.pacing import DevicePacer\n")
    assert "askexpert_lab.testbed.pacing" in _imported(bad)  # what the product-never-imports-the-lab check reads

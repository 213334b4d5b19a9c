"""The package's rules, as tests: the layer table of docs/developing.md, no import cycle, and the
`_compat` rule (no module but labkit/_compat.py touches a private third-party name)."""

import ast
import re
from pathlib import Path

import pytest

import labkit

PACKAGE = Path(labkit.__file__).resolve().parent
DOC = PACKAGE.parent / "docs" / "developing.md"

# Listed in the doc table before the module lands, so a branch that adds it finds its place taken.
# Only these may be listed without existing; any other listed name must be a module.
PLANNED = {"labkit.retrieval": "issue 25: retrieval over course records, being added on another branch"}


# ------------------------------------------------------------------------------------------------
# The import graph


def _imports(path: Path) -> set[str]:
    """labkit modules imported anywhere in a file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("labkit"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            found |= {n for n in names if _module_file(n)} or {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("labkit")}
    return {m for m in found if _module_file(m)}


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split(".")[1:])
    for candidate in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        graph[name] = {m for m in _imports(path) if m != name and m != "labkit"}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_import_graph_has_no_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_compat_imports_nothing_from_labkit_and_env_only_compat():
    graph = _graph()
    assert graph["labkit._compat"] == set() and graph["labkit.env"] == {"labkit._compat"}
    assert graph["labkit"] == {"labkit._compat"}, "labkit/__init__.py imports only _compat (one log filter)"


# ------------------------------------------------------------------------------------------------
# The layer table (docs/developing.md is its one source)


def layer_table(text: str) -> dict[str, int]:
    """The doc's "Module map" table → {"labkit.<module>": layer}."""
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    table = {}
    for layer, modules in re.findall(r"^\|\s*(\d+)\s*\|([^|]*)\|", section, flags=re.M):
        for name in re.findall(r"`([\w.]+)`", modules):
            assert f"labkit.{name}" not in table, f"{name} is in two rows of the layer table"
            table[f"labkit.{name}"] = int(layer)
    return table


def entry_of(module: str, table: dict[str, int]) -> str | None:
    """The table entry that places `module`: itself, else the package it belongs to (longest match)."""
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in table:
            return ".".join(parts[:n])
    return None


def layer_violations(graph: dict[str, set[str]], table: dict[str, int]) -> list[str]:
    """Imports against the table: to a row below (higher number) or to the same row, except within one
    entry (a package's own parts) and within the top row."""
    top = max(table.values())
    bad = []
    for module, deps in sorted(graph.items()):
        here = entry_of(module, table)
        if here is None:
            continue
        for dep in sorted(deps):
            there = entry_of(dep, table)
            if there is None or there == here:
                continue
            if table[there] > table[here] or (table[there] == table[here] and table[here] != top):
                bad.append(f"{module} (layer {table[here]}) imports {dep} (layer {table[there]})")
    return bad


@pytest.fixture(scope="module")
def table() -> dict[str, int]:
    return layer_table(DOC.read_text(encoding="utf-8"))


def test_every_module_under_labkit_is_in_the_layer_table(table):
    unplaced = sorted(m for m in _graph() if m != "labkit" and entry_of(m, table) is None)
    assert not unplaced, (f"{unplaced} not in the layer table of docs/developing.md: add each to the row "
                          "below everything it imports")


def test_every_module_in_the_layer_table_exists(table):
    missing = sorted(m for m in table if _module_file(m) is None and m not in PLANNED)
    assert not missing, f"docs/developing.md's layer table lists {missing}, which are not in labkit/: drop them"


def test_imports_follow_the_layer_table(table):
    bad = layer_violations(_graph(), table)
    assert not bad, "imports against the layer table of docs/developing.md:\n" + "\n".join(bad)


def test_the_layer_checker_catches_same_row_and_upward_imports():
    table = {"labkit.a": 0, "labkit.b": 1, "labkit.c": 1, "labkit.pkg": 1, "labkit.t": 2, "labkit.u": 2}
    graph = {"labkit.b": {"labkit.a"}, "labkit.c": {"labkit.b"}, "labkit.a": {"labkit.t"},
             "labkit.pkg": {"labkit.pkg.x"}, "labkit.pkg.x": {"labkit.a"}, "labkit.t": {"labkit.u", "labkit.c"}}
    assert layer_violations(graph, table) == ["labkit.a (layer 0) imports labkit.t (layer 2)",
                                              "labkit.c (layer 1) imports labkit.b (layer 1)"]
    doc = "## Module map\n| layer | modules | holds |\n|---|---|---|\n| 0 | `a`, `b.c` | x |\n| 3 | `d` | y |\n## Next"
    assert layer_table(doc) == {"labkit.a": 0, "labkit.b.c": 0, "labkit.d": 3}
    assert entry_of("labkit.b.c.e", layer_table(doc)) == "labkit.b.c" and entry_of("labkit.b", layer_table(doc)) is None


# ------------------------------------------------------------------------------------------------
# The _compat rule: private third-party names only in labkit/_compat.py

THIRD_PARTY = {"torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "nbclient",
               "nbconvert", "nbformat", "ipykernel"}


def _third_party(module: str) -> bool:
    root = module.split(".")[0]
    return root in THIRD_PARTY or root.startswith("jupyter")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def private_accesses(source: str) -> list[str]:
    """Private third-party names a module imports or reads: `from torch import _x`, `import torch._C`,
    `torch.cpu._x`, `getattr(torch.cpu, "_x")` and `getattr(torch.cpu, name)` (a name the reader
    cannot check). Names bound by an import of a third-party module are followed through aliases."""
    tree = ast.parse(source)
    modules: set[str] = set()  # local names bound to a third-party module or one of its members
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _third_party(a.name):
                    modules.add(a.asname or a.name.split(".")[0])
                    if any(_private(p) for p in a.name.split(".")):
                        found.append(f"line {node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _third_party(node.module):
            if any(_private(p) for p in node.module.split(".")):
                found.append(f"line {node.lineno}: from {node.module} import ...")
            for a in node.names:
                modules.add(a.asname or a.name)
                if _private(a.name):
                    found.append(f"line {node.lineno}: from {node.module} import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and _root(node) in modules:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) >= 2
              and node.func.id in {"getattr", "setattr", "hasattr", "delattr"} and _root(node.args[0]) in modules):
            name = node.args[1]
            if not isinstance(name, ast.Constant) or _private(str(name.value)):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return sorted(set(found), key=lambda s: int(s.split()[1].rstrip(":")))


def test_no_module_but_compat_touches_a_private_third_party_name():
    bad = {str(p.relative_to(PACKAGE.parent)): hits for p in sorted(PACKAGE.rglob("*.py"))
           if p.name != "_compat.py" and (hits := private_accesses(p.read_text()))}
    assert not bad, ("private third-party names outside labkit/_compat.py (move each into a _compat function "
                     f"with the versions it is tested on, and a drift test of its effect): {bad}")


def test_the_private_name_checker_catches_each_kind():
    bad = '''
import torch
import trl.trainer.utils as trl_utils
from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
from transformers import modeling_utils as mu
from torch._dynamo import config
import jupyter_client._version

def f(name, model):
    torch.cpu._is_avx512_bf16_supported()
    trl_utils._use_triton = None
    mu._init_weights
    getattr(torch.cpu, "_is_amx_tile_supported")
    getattr(torch.cpu, name)
    return model._private_of_a_labkit_object, torch.__version__, getattr(torch, "float32")
'''
    hits = private_accesses(bad)
    assert [h.split(":")[0] for h in hits] == [f"line {n}" for n in (4, 6, 7, 10, 11, 12, 13, 14)], hits
    assert private_accesses("import torch\nx = torch.nn.Linear(2, 2)\ny = torch.__version__\n") == []

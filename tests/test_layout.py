"""The package's shape (docs/design.md#code-style): imports only go down the layers, with no cycle,
counting function-local imports; planning needs no JAX. (A new method is one module and one registry
line: tests/test_methods.py.)

    python -c "import sys; sys.path[:0] = ['tests']; import test_layout as t; \
        print(t.cycles(t.import_graph()) or 'no cycle')"
"""
import ast
import pathlib
import subprocess
import sys


ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("scalable_elicitation", "analysis", "launch", "configs")

# Layers of scalable_elicitation, bottom first: a module may import its own layer or lower ones.
LAYERS = (
    ("paths", "sharding", "budget", "assets", "tracking", "grouping", "memory", "hostmem",
     "identity"),
    ("data",),
    ("batching", "metrics", "prompts", "weak_fit"),
    ("models",),
    ("train", "checkpoint"),
    ("stage",),
    ("learner", "groups"),
    ("labelers", "methods", "selection", "prompt_inputs", "aot"),
    ("records", "planning", "schedules"),
    ("shared",),
    ("run_program",),
    ("runner",),
    ("experiment",),
    ("plots", "main", "data.__main__"),
)


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, anywhere in its body (function-local too)."""
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".")[:len(name.split(".")) - node.level + is_pkg]
                    base = ".".join(anchor + ([base] if base else []))
                for a in node.names:  # `from pkg import module` imports the module
                    targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
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
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer(module: str) -> int | None:
    """The layer of a core module: that of its longest listed prefix."""
    rest = module.removeprefix("scalable_elicitation.")
    hits = [(len(n), i) for i, names in enumerate(LAYERS) for n in names
            if rest == n or rest.startswith(n + ".")]
    return max(hits)[1] if hits else None


def test_no_import_cycle():
    graph = import_graph()
    assert "scalable_elicitation.runner" in graph and "launch.sweep" in graph
    assert cycles(graph) == []


def test_core_imports_only_go_down():
    graph = import_graph()
    core = [m for m in graph if m.startswith("scalable_elicitation.")]
    unplaced = [m for m in core if layer(m) is None]
    assert unplaced == [], f"modules missing from LAYERS: {unplaced}"
    upward = [(a, b) for a in core for b in graph[a]
              if b.startswith("scalable_elicitation.") and layer(b) > layer(a)]
    assert upward == []


def test_planning_and_analysis_import_no_jax():
    code = ("import sys, analysis.records, scalable_elicitation.planning, "
            "scalable_elicitation.methods; print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_cycle_finder_finds_a_function_local_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []

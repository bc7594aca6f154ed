"""The package's imports run one way: config → data → model → train → sample → eval → plan (see
docs/architecture.md). Read with `ast`, so function-level (lazy) imports count too."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jax_distill"

# Layer of each top-level module or subpackage; a module may import its own layer and the ones below it.
LAYERS = {
    "config": 0, "errors": 0, "sharding": 0, "answers": 0, "hardware": 0, "manifest": 0, "paths": 0,
    "data": 1, "model": 2, "train": 3, "sample": 4, "eval": 5, "distill": 6, "plan": 6, "demo": 7,
    "cli": 8, "__init__": 8,  # entry points: the CLI dispatcher and the lazy public API
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 2:
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jax_distill"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names
                            if (PACKAGE.parent / node.module.replace(".", "/") / f"{a.name}.py").is_file())
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("jax_distill"))
        graph[name] = {d for d in deps if d != name}
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    assert key in LAYERS, f"{module}: new top-level module or package; give it a layer in LAYERS and in the docs"
    return LAYERS[key]


def test_no_upstream_imports():
    bad = [f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
           for m, deps in _imports().items() for d in sorted(deps) if _layer(d) > _layer(m)]
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if d not in graph:
                continue
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d):] + [d]) if d in path else f"{m} -> {d}")
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


# The one sanctioned use, isolated in one function: cuDNN's packed-sequence attention (ragged q/kv offsets, so the
# kernel skips the masked causal half instead of taking a dense bias) has no public jax API in jax 0.10/0.11.
PRIVATE_JAX_ALLOWED = {"jax_distill/model/attention.py": {"jax._src.cudnn.fused_attention_stablehlo"}}


def test_no_private_jax_imports():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(PACKAGE.parent))
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{rel}: {n}" for n in names
                          if n.startswith("jax._src") and n not in PRIVATE_JAX_ALLOWED.get(rel, set())]
    assert not offenders, f"private jax._src imports: {offenders}"


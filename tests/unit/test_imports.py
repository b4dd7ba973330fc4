"""The package's layering, read from the source with `ast`: no cycles, no upward imports.

Every import counts, function-local ones too (a local import that only breaks a cycle still is
one). Layers, lowest first; a module may import its own layer and the ones below:

    errors, config, logs  <  records, model  <  training, kafka  <  pipeline  <  app
    <  demo, replay, bench, cli

and `compile/` consumes `streamer.model`, never the other way round.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYER = {
    "streamer.errors": 0,
    "streamer.config": 0,
    "streamer.logs": 0,
    "streamer.records": 1,
    "streamer.model": 1,
    "streamer.training": 2,
    "streamer.kafka": 2,
    "streamer.pipeline": 3,
    "streamer.app": 4,
    "streamer.demo": 5,
    "streamer.replay": 5,
    "streamer.bench": 5,
    "streamer.cli": 5,
    "streamer.__main__": 5,
}
# Allowed across one layer: the bench reuses the service's own batch policy, and serving never
# imports training (checked below separately).
FORBIDDEN_PAIRS = {("streamer.model", "streamer.training")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else None
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = (package or _module_name(path)).split(".")
                base = base[: len(base) - node.level + 1]
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _sources(top: str) -> dict[str, Path]:
    return {_module_name(p): p for p in (ROOT / top).rglob("*.py")}


MODULES = _sources("streamer")


def _known(name: str) -> str | None:
    """The streamer module an imported name refers to (a module, or a name inside one)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _layer(module: str) -> tuple[str, int]:
    for prefix, layer in sorted(LAYER.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, layer
    raise AssertionError(f"{module} has no layer: add it to LAYER")


GRAPH = {
    name: {m for i in _imports(path) if (m := _known(i)) is not None and m != name}
    for name, path in MODULES.items()
}


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        if name != "streamer":
            _layer(name)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "streamer"))
def test_no_upward_import(module: str) -> None:
    group, layer = _layer(module)
    for target in GRAPH[module]:
        if target == "streamer":
            continue
        target_group, target_layer = _layer(target)
        assert target_layer <= layer, f"{module} imports {target} (a higher layer)"
        assert (group, target_group) not in FORBIDDEN_PAIRS, f"{module} imports {target}"


def test_streamer_never_imports_compile() -> None:
    for name, path in MODULES.items():
        bad = {i for i in _imports(path) if i == "compile" or i.startswith("compile.")}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_compile_only_consumes_streamer_model_and_training() -> None:
    for name, path in _sources("compile").items():
        for imported in _imports(path):
            target = _known(imported)
            if target is not None:
                group, _ = _layer(target)
                assert group in {"streamer.model", "streamer.training", "streamer.config",
                                 "streamer.errors"}, f"{name} imports {target}"  # fmt: skip

"""The package's layout rules (README "Layout"): modules import one way, none is too long, and
the sources the code cites are where the facts come from, not files of one machine.

Imports are read from the source with ``ast`` (every ``import`` statement anywhere in a module,
also inside functions and ``TYPE_CHECKING`` blocks, since a lazy import is still a dependency),
so a circle is found even when it never fails at run time.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "spikedet"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from a import b`` counts module ``a.b`` when it
    exists, else ``a``)."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    known = set(mods)
    return {m: imports_of(p, m, known) for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_cycle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the walk sees the package
    assert cycles(graph) == []


def test_mapper_steps_import_only_earlier_steps() -> None:
    steps = [
        "geometry", "precision", "edits", "psums", "delays", "connectivity", "tiles", "placement",
        "splits", "mapper",
    ]  # fmt: skip
    graph = import_graph()
    for i, step in enumerate(steps):
        deps = {
            m.rsplit(".", 1)[1]
            for m in graph[f"spikedet.deploy.mapping.{step}"]
            if m.startswith("spikedet.deploy.mapping.")
        }
        assert deps <= set(steps[:i]), f"{step} imports later steps {deps - set(steps[:i])}"


def test_shared_layers_do_not_import_train() -> None:
    graph = import_graph()
    for mod, deps in graph.items():
        if mod.startswith(("spikedet.data", "spikedet.metrics", "spikedet.deploy", "spikedet.sim")):
            bad = {d for d in deps if d.startswith("spikedet.train")}
            assert not bad, f"{mod} imports {bad}"


def test_no_module_is_too_long() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_sources_are_cited_not_local_files() -> None:
    # A user of the package has neither this machine's folders nor the developers' notes.
    pattern = re.compile(
        r"/work/|/root/|/home/|\.\./shared|shared/reference|detectors\.md|nir_lava_loihi|data_formats\.md"
    )
    places = [*PACKAGE.rglob("*.py"), *(REPO / "hardware_profiles").glob("*.yaml")]
    places += [*(REPO / "docs").rglob("*.md")]
    bad = [
        f"{p.relative_to(REPO)}:{i}"
        for p in places
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert bad == []

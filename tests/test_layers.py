"""The three layers import only downward, as docs/ARCHITECTURE.md says: studio/ -> library/ -> pipelines/.
The engine knows no Gradio and no output folder; the studio knows no diffusers and uses the engine only
through its public modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE_PUBLIC = {
    "pipelines", "pipelines.request", "pipelines.catalogue", "pipelines.manager", "pipelines.memory",
    "pipelines.speed", "pipelines.attention", "pipelines.errors", "pipelines.paths", "pipelines.loras",
    "pipelines.caching", "pipelines.parallel", "pipelines.enhance", "pipelines.long_take",
}  # fmt: skip


def imports(package: str) -> dict[str, set[str]]:
    """Every module each file of `package` imports (top level and inside functions)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names |= {f"{node.module}.{alias.name}" for alias in node.names if node.module == "pipelines"}
        found[str(path.relative_to(ROOT))] = names
    return found


def roots(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_the_engine_imports_neither_the_library_nor_the_studio_nor_gradio():
    for path, names in imports("pipelines").items():
        assert not roots(names) & {"library", "studio", "gradio", "moviepy", "c2pa"}, path


def test_the_library_imports_no_studio_no_gradio_and_no_diffusers():
    for path, names in imports("library").items():
        assert not roots(names) & {"studio", "gradio", "diffusers", "transformers", "accelerate"}, path


def test_the_studio_uses_the_engine_through_its_public_modules_and_never_diffusers():
    for path, names in imports("studio").items():
        assert not roots(names) & {"diffusers", "transformers", "accelerate"}, path
        engine = {name for name in names if name.split(".")[0] == "pipelines"}
        modules = {name if is_module(name) else name.rsplit(".", 1)[0] for name in engine}  # a function: its module
        assert modules <= ENGINE_PUBLIC, (path, modules - ENGINE_PUBLIC)


def test_the_studios_rooms_the_jobs_and_the_process_know_nothing_of_the_page():
    """studio/page/ (the page) sits on studio/core.py (the Studio) and studio/jobs/ (the queue and its workers);
    those two never reach back up into the page, and only the page, the launcher and the error wrapper know
    Gradio."""
    gradio_allowed = {"studio/server.py", "studio/errors.py"}
    for path, names in imports("studio").items():
        if path.startswith("studio/page/"):
            continue
        assert not {n for n in names if n.startswith("studio.page")} or path == "studio/server.py", path
        assert "gradio" not in roots(names) or path in gradio_allowed, path


def is_module(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """The project's modules and the project modules each imports: at the top, inside functions and under
    TYPE_CHECKING alike (each is a dependency), relative imports resolved."""
    files = {}
    for package in ("studio", "library", "pipelines"):
        for path in (root / package).rglob("*.py"):
            files[".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")] = path
    files["app"] = root / "app.py"

    def known(name: str) -> str | None:  # a name, or the module holding it
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
                targets |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names}
        graph[module] = {m for m in map(known, targets) if m and m != module}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import each other round a circle (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_round_a_circle():
    found = circles(module_graph())
    assert not found, "modules importing each other round a circle: " + "; ".join(", ".join(c) for c in found)


def test_the_circle_finder_sees_circles_through_type_checking_function_and_relative_imports(tmp_path):
    for package in ("studio", "studio/page", "library", "pipelines"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "app.py").write_text("import studio.core\n")
    (tmp_path / "studio/core.py").write_text("from studio.page import layout\n")
    (tmp_path / "studio/page/layout.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from studio.core import Studio\n"
    )
    (tmp_path / "library/a.py").write_text("def f():\n    from library import b\n")
    (tmp_path / "library/b.py").write_text("from .a import f\n")
    (tmp_path / "pipelines/c.py").write_text("import pipelines\n")
    assert circles(module_graph(tmp_path)) == [["studio.core", "studio.page.layout"], ["library.a", "library.b"]]

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
    "pipelines.caching", "pipelines.parallel",
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


def is_module(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()

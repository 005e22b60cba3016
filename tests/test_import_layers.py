"""Imports flow one way, as docs/index.md says: embeddings -> attention -> blocks -> models;
memory/ knows nothing of the model side; checkpoint/, config, the CLI and the demo sit on top.
The one exception is documented: the model classes' ``from_cdit_checkpoint``,
``save_pretrained`` and ``from_pretrained`` import ``checkpoint/`` lazily, inside the method."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "hybrid_cdit"
TOP = {"cli", "demo", "distributed", "__main__"}
FORBIDDEN = {
    "_validation": {"embeddings", "attention", "blocks", "models", "memory", "checkpoint", *TOP},
    "embeddings": {"attention", "blocks", "models", "memory", "checkpoint", "registry", *TOP},
    "attention": {"blocks", "models", "memory", "checkpoint", "registry", "config", *TOP},
    "blocks": {"models", "memory", "checkpoint", "registry", "config", *TOP},
    "memory": {"embeddings", "attention", "blocks", "models", "checkpoint", "registry", *TOP},
    "models": {"checkpoint", "registry", "config", *TOP},
}
LAZY = {
    ("models/cdit.py", "from_cdit_checkpoint", "checkpoint"),
    ("models/cdit.py", "save_pretrained", "checkpoint"),
    ("models/cdit.py", "from_pretrained", "checkpoint"),
}


def _part(path: Path) -> str:
    """The layer a module belongs to: its subpackage or, at the top, its module name."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _target(path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The layers of ``hybrid_cdit`` an import statement reaches."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name.startswith("hybrid_cdit.")]
        return [n.split(".")[1] for n in names]
    if node.level == 0:
        module = node.module or ""
        return [module.split(".")[1]] if module.startswith("hybrid_cdit.") else []
    package = list(path.relative_to(PACKAGE).parent.parts)
    base = package[: len(package) - (node.level - 1)]
    parts = [*base, *(node.module.split(".") if node.module else [])]
    if parts:
        return [parts[0]]
    return [alias.name for alias in node.names]  # from . import x


def _imports(path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Module-level import targets, and ``(function, target)`` of imports inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: list[str] = []
    lazy: list[tuple[str, str]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, child.name)
            elif isinstance(child, ast.Import | ast.ImportFrom):
                for target in _target(path, child):
                    if function is None:
                        top.append(target)
                    else:
                        lazy.append((function, target))
            else:
                visit(child, function)

    visit(tree, None)
    return top, lazy


def test_imports_flow_one_way() -> None:
    wrong = []
    lazy_found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        part = _part(path)
        forbidden = FORBIDDEN.get(part, set())
        top, lazy = _imports(path)
        rel = str(path.relative_to(PACKAGE))
        wrong += [f"{rel} imports {t}" for t in top if t in forbidden and t != part]
        for function, target in lazy:
            if target in forbidden and target != part:
                lazy_found.add((rel, function, target))
    assert not wrong, wrong
    assert lazy_found == LAZY

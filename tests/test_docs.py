"""The documentation stays true to the code.

- every public name (``hybrid_cdit.__all__`` and the subpackages' ``__all__``) appears in
  ``docs/api.md``, and every public class and function has a signature stub there whose
  parameters (names, kinds, literal defaults) match the code;
- code blocks marked ``<!-- snippet: examples/FILE.py#NAME -->`` are the regions
  ``# [docs:NAME]`` ... ``# [/docs:NAME]`` of the example files, character for character after
  dedent;
- relative links between the docs (and to files of the repository) resolve, anchors included.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api.md"
PACKAGES = (
    "hybrid_cdit",
    "hybrid_cdit.models",
    "hybrid_cdit.memory",
    "hybrid_cdit.attention",
    "hybrid_cdit.blocks",
    "hybrid_cdit.checkpoint",
    "hybrid_cdit.distributed",
)

FENCE = re.compile(r"^```[^\n]*\n.*?^```[ \t]*$", re.M | re.S)
SNIPPET = re.compile(r"<!-- snippet: (\S+?)#(\w+) -->\n```[^\n]*\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def public_names() -> dict[str, Any]:
    """Every public name and its object, over the packages' ``__all__``."""
    names: dict[str, Any] = {}
    for package in PACKAGES:
        module = importlib.import_module(package)
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{package} has no __all__"
        for name in exported:
            names.setdefault(name, getattr(module, name))
    return names


def markdown_files() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def without_fences(text: str) -> str:
    return FENCE.sub("", text)


# ----------------------------------------------------------------------------- api.md names


def test_every_public_name_is_in_api_md() -> None:
    text = without_fences(API.read_text(encoding="utf-8"))
    spans = set(re.findall(r"`([^`\n]+)`", text))
    headings = " ".join(re.findall(r"^#+ (.*)$", text, re.M))
    missing = [
        name
        for name in public_names()
        if name not in spans and not re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", headings)
    ]
    assert not missing, f"public names missing from docs/api.md: {missing}"


# ------------------------------------------------------------------------ api.md signatures


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    default: Any  # EMPTY, OTHER (a default that is not a literal) or the literal value


EMPTY, OTHER = "<no default>", "<non-literal default>"


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return EMPTY
    try:
        return ast.literal_eval(node)
    except ValueError:
        return OTHER


def stub_params(fn: ast.FunctionDef) -> list[Param]:
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults))
    defaults += list(a.defaults)
    params = [
        Param(arg.arg, "positional_only" if i < len(a.posonlyargs) else "positional", _literal(d))
        for i, (arg, d) in enumerate(zip(positional, defaults, strict=True))
    ]
    if a.vararg:
        params.append(Param(a.vararg.arg, "var_positional", EMPTY))
    params += [
        Param(arg.arg, "keyword_only", _literal(d))
        for arg, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)
    ]
    if a.kwarg:
        params.append(Param(a.kwarg.arg, "var_keyword", EMPTY))
    return params


_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: "positional_only",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
    inspect.Parameter.VAR_POSITIONAL: "var_positional",
    inspect.Parameter.KEYWORD_ONLY: "keyword_only",
    inspect.Parameter.VAR_KEYWORD: "var_keyword",
}


def code_params(signature: inspect.Signature) -> list[Param]:
    return [
        Param(p.name, _KINDS[p.kind], EMPTY if p.default is inspect.Parameter.empty else p.default)
        for p in signature.parameters.values()
    ]


def compare(stub: list[Param], code: list[Param], where: str) -> list[str]:
    shape = [(p.name, p.kind) for p in stub]
    expected = [(p.name, p.kind) for p in code]
    if shape != expected:
        return [f"{where}: docs have {shape}, code has {expected}"]
    problems = []
    for s, c in zip(stub, code, strict=True):
        if s.default == EMPTY and c.default != EMPTY:
            problems.append(f"{where}: {s.name} has the default {c.default!r} in the code")
        elif s.default == OTHER and c.default == EMPTY:
            problems.append(f"{where}: {s.name} has no default in the code")
        elif s.default not in (EMPTY, OTHER) and s.default != c.default:
            problems.append(f"{where}: {s.name} defaults to {c.default!r}, not {s.default!r}")
    return problems


def _method(cls: type, name: str) -> Any:
    attr = inspect.getattr_static(cls, name)
    if isinstance(attr, classmethod | staticmethod):
        return attr.__func__
    if isinstance(attr, property):
        return attr.fget
    return attr


def check_class(node: ast.ClassDef, cls: type) -> list[str]:
    problems = []
    fields = [
        Param(
            item.target.id, "positional", _literal(item.value) if item.value is not None else EMPTY
        )
        for item in node.body
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
    ]
    if fields:
        problems += compare(fields, code_params(inspect.signature(cls)), f"{cls.__name__} fields")
    for item in node.body:
        if not isinstance(item, ast.FunctionDef):
            continue
        where = f"{cls.__name__}.{item.name}"
        try:
            method = _method(cls, item.name)
        except AttributeError:
            problems.append(f"{where}: no such method")
            continue
        problems += compare(stub_params(item), code_params(inspect.signature(method)), where)
    return problems


def api_stubs() -> list[ast.stmt]:
    blocks = re.findall(r"^```python\n(.*?)^```", API.read_text(encoding="utf-8"), re.M | re.S)
    return [stmt for block in blocks for stmt in ast.parse(block).body]


def test_api_md_signatures_match_the_code() -> None:
    names = public_names()
    documented: set[str] = set()
    problems: list[str] = []
    for stmt in api_stubs():
        if isinstance(stmt, ast.FunctionDef | ast.ClassDef) and stmt.name in names:
            documented.add(stmt.name)
            obj = names[stmt.name]
            if isinstance(stmt, ast.ClassDef):
                problems += check_class(stmt, obj)
            else:
                problems += compare(
                    stub_params(stmt), code_params(inspect.signature(obj)), stmt.name
                )
        elif isinstance(stmt, ast.FunctionDef | ast.ClassDef):
            problems.append(f"{stmt.name}: documented in api.md but not a public name")
    callables = {n for n, o in names.items() if inspect.isclass(o) or inspect.isfunction(o)}
    callables -= {"Strategy"}  # a typing.Literal alias, not a class
    undocumented = sorted(callables - documented)
    if undocumented:
        problems.append(f"public classes/functions without a signature: {undocumented}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------- snippets


def example_region(path: Path, name: str) -> str:
    text = path.read_text(encoding="utf-8")
    pattern = rf"^[ \t]*# \[docs:{name}\][ \t]*\n(.*?)^[ \t]*# \[/docs:{name}\][ \t]*$"
    found = re.findall(pattern, text, re.M | re.S)
    assert len(found) == 1, f"{path.name}: expected one region [docs:{name}], found {len(found)}"
    return textwrap.dedent(found[0]).strip("\n")


def snippets() -> list[tuple[Path, str, str, str]]:
    """``(markdown file, example path, region name, code in the markdown)``."""
    return [
        (md, example, name, code)
        for md in markdown_files()
        for example, name, code in SNIPPET.findall(md.read_text(encoding="utf-8"))
    ]


def test_integration_guide_uses_snippets() -> None:
    used = {(md.name, example) for md, example, _, _ in snippets()}
    assert ("integration-nwm.md", "examples/training_step.py") in used
    assert ("integration-nwm.md", "examples/rollout_with_memory.py") in used


@pytest.mark.parametrize(
    ("markdown", "example", "name", "code"),
    [(md.name, ex, name, code) for md, ex, name, code in snippets()],
    ids=[f"{md.name}:{ex}#{name}" for md, ex, name, _ in snippets()],
)
def test_snippet_is_the_example_code(markdown: str, example: str, name: str, code: str) -> None:
    expected = example_region(ROOT / example, name)
    assert textwrap.dedent(code).strip("\n") == expected, (
        f"{markdown}: the block marked {example}#{name} differs from the example's region"
    )


def test_every_marker_comment_is_well_formed() -> None:
    for md in markdown_files():
        text = md.read_text(encoding="utf-8")
        markers = re.findall(r"<!-- snippet:.*?-->", text)
        assert len(markers) == len(SNIPPET.findall(text)), (
            f"{md.name}: a snippet marker is not directly followed by a fenced code block"
        )


# ---------------------------------------------------------------------------------- links


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to ``-``."""
    text = re.sub(r"[`*]", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in re.findall(r"^#{1,6} (.*)$", without_fences(path.read_text("utf-8")), re.M):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        result.add(anchor if count == 0 else f"{anchor}-{count}")
    return result


def test_github_anchor() -> None:
    assert github_anchor("`update_memory`: writes, and why") == "update_memory-writes-and-why"
    assert github_anchor("The key/value cache") == "the-keyvalue-cache"
    assert github_anchor("`hybrid_cdit.memory`") == "hybrid_cditmemory"


@pytest.mark.parametrize("markdown", markdown_files(), ids=lambda p: p.name)
def test_relative_links_resolve(markdown: Path) -> None:
    broken = []
    for target in LINK.findall(without_fences(markdown.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = unquote(target).partition("#")
        path = (markdown.parent / file_part).resolve() if file_part else markdown
        if not path.exists():
            broken.append(f"{target}: {path.relative_to(ROOT)} does not exist")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.name}")
    assert not broken, f"{markdown.name}: " + "; ".join(broken)

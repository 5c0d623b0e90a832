"""DESIGN.md's layering rule over the whole package: a folder builds only on the folders above it in the
table (``geometry`` … ``cli``), never on one below it. Every ``import``/``from … import`` in every module
counts, including the ones inside functions (a lazy import is still a dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

import morphable

PACKAGE = Path(morphable.__file__).resolve().parent

# DESIGN.md's table, top (lowest layer) to bottom
ORDER = ("geometry", "io", "models", "render", "detect", "identity", "losses", "fitting", "nets", "train", "eval",
         "viz", "reconstruct", "cli")
# Outside the table, importable from anywhere: the error types, and the package root (``morphable.load_model``
# and friends re-exported for users).
ANYWHERE = ("errors", "")

def layer_of(dotted: str) -> str | None:
    """The table entry of ``morphable.<layer>[.…]`` (``""`` for the root), ``None`` outside the package."""
    parts = dotted.split(".")
    if parts[0] != "morphable":
        return None
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    """``morphable/fitting/stn.py`` → ``morphable.fitting.stn`` (a package's ``__init__.py`` → the package)."""
    parts = ("morphable", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """``(absolute dotted name, line)`` of every import in the source of ``module`` (relative imports resolved
    against its package: ``module`` itself when ``is_package``)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((name, node.lineno))
            # ``from morphable import nets`` names a layer in the imported names
            if name == "morphable":
                out += [(f"morphable.{alias.name}", node.lineno) for alias in node.names
                        if alias.name.split(".")[0] in ORDER]
    return out


def violations() -> list[tuple[str, int, str, str]]:
    """``(module path, line, its layer, imported name)`` for each import of a layer below the module's."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        own = layer_of(module)
        if own not in ORDER:
            continue  # the root package, errors.py, __main__.py
        for name, line in imported_modules(path.read_text(), module, path.name == "__init__.py"):
            layer = layer_of(name)
            if layer is None or layer in ANYWHERE or layer == own:
                continue
            if layer not in ORDER:
                raise AssertionError(f"{path}:{line}: imports {name}, a layer missing from DESIGN.md's table")
            if ORDER.index(layer) > ORDER.index(own):
                found.append((str(path.relative_to(PACKAGE.parent)), line, own, name))
    return found


def test_the_parser_sees_relative_lazy_and_root_imports():
    source = ("from ..nets import layout\nfrom morphable import cli, errors\nfrom . import rotation\n"
              "def f():\n    import morphable.train.trainer as t\n    from .. import viz\n")
    names = [n for n, _ in imported_modules(source, "morphable.geometry.probe")]
    assert sorted(names) == sorted(["morphable.nets", "morphable", "morphable.cli", "morphable.geometry",
                                    "morphable.train.trainer", "morphable", "morphable.viz"])
    assert [n for n, _ in imported_modules("from .rotation import x\n", "morphable.geometry", True)] == \
        ["morphable.geometry.rotation"]
    assert module_name(PACKAGE / "fitting" / "stn.py") == "morphable.fitting.stn"
    assert module_name(PACKAGE / "render" / "__init__.py") == "morphable.render"


def test_no_module_imports_a_layer_below_it():
    bad = violations()
    assert not bad, "layering violations (DESIGN.md order):\n" + "\n".join(
        f"  {path}:{line} ({own}) imports {name}" for path, line, own, name in bad)

"""The layering of docs/architecture.md, checked on the import graph of src/petflare.

Every ``import petflare.x`` / ``from petflare.x... import`` in every module (at the top or inside
a function) is read with :mod:`ast`; a package may import only the packages below it, and no
package imports another package's private name. Modules over the size limit must be named in
docs/architecture.md with the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "petflare"
ARCHITECTURE_MD = REPO / "docs" / "architecture.md"

#: Layers, top first; a package may import its own modules and the packages of lower layers.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "benchmarks"),
    ("inference",),
    ("training",),
    ("data",),
    ("synth", "quant"),
    ("networks", "io"),
    ("constants", "errors", "paths"),
)
#: Imports across the rule that the architecture allows, with the reason.
ALLOWED: dict[tuple[str, str], str] = {
    # the benchmarks compose the training configs as the commands do (config folder, resolvers)
    ("benchmarks", "cli._common"): "config composition",
    # io.dicom's SUL conversion uses quant.metrics.sul_factor (the Janmahasatian lean body mass)
    ("io", "quant.metrics"): "SUL factor of the DICOM reader (issue 33)",
}
#: Modules longer than this need a sentence in docs/architecture.md saying why.
MAX_MODULE_LINES = 600

LAYER_OF = {package: i for i, layer in enumerate(LAYERS) for package in layer}


def _package(module: str) -> str:
    """``petflare.data.longitudinal.cache`` -> ``data``; ``petflare.errors`` -> ``errors``."""
    return module.split(".")[1]


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported petflare module, imported names) of every import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
    return [(line, mod, names) for line, mod, names in found if mod.startswith("petflare.")]


MODULES = sorted(SRC.rglob("*.py"))


def test_every_package_has_a_layer() -> None:
    packages = {_package(_module_name(p)) for p in MODULES if _module_name(p) != "petflare"}
    assert packages <= set(LAYER_OF), f"packages without a layer: {packages - set(LAYER_OF)}"


def _violations(path: Path, src: Path = SRC) -> list[str]:
    """The imports of ``path`` (a module under ``src``) that break the layering."""
    module = _module_name(path, src)
    if module == "petflare":
        return []
    own = _package(module)
    bad = []
    for line, imported, _names in _imports(path):
        target = _package(imported)
        if target == own:
            continue
        rest = imported.split(".", 1)[1]
        if any(
            rest == allowed or rest.startswith(allowed + ".") for o, allowed in ALLOWED if o == own
        ):
            continue
        if LAYER_OF[target] <= LAYER_OF[own]:
            bad.append(f"{path.name}:{line}: {own} imports {imported}")
    return bad


def test_packages_import_only_lower_layers() -> None:
    bad = [v for path in MODULES for v in _violations(path)]
    assert not bad, "imports against docs/architecture.md's layers:\n" + "\n".join(bad)


def test_no_package_imports_a_private_name_of_another() -> None:
    """A name with a leading underscore stays inside its package (its modules may share it)."""
    bad = []
    for path in MODULES:
        own = _package(_module_name(path)) if _module_name(path) != "petflare" else ""
        for line, imported, names in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if _package(imported) != own and private:
                bad.append(f"{path.relative_to(REPO)}:{line}: {imported} {private}")
    assert not bad, "private names imported from another package:\n" + "\n".join(bad)


def test_long_modules_are_explained() -> None:
    text = ARCHITECTURE_MD.read_text()
    missing = []
    for path in MODULES:
        n_lines = len(path.read_text().splitlines())
        rel = str(path.relative_to(SRC.parent.parent))
        if n_lines > MAX_MODULE_LINES and rel not in text:
            missing.append(f"{rel} ({n_lines} lines)")
    assert not missing, "modules over ~600 lines not explained in docs/architecture.md: " + str(
        missing
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import petflare.inference.pipeline\n", ["data imports petflare.inference.pipeline"]),
        ("from petflare.training.fit import fit\n", ["data imports petflare.training.fit"]),
        ("def f():\n    from petflare.cli import train\n", ["data imports petflare.cli"]),
        ("from petflare.quant import lesion_instances\nimport numpy\n", []),
        ("from petflare.data.transforms import ScaleSuv\n", []),
    ],
)
def test_the_rule_catches_an_upward_import(
    tmp_path: Path, source: str, expected: list[str]
) -> None:
    """A data module importing inference, training or cli (even inside a function) is caught."""
    fake = tmp_path / "petflare" / "data" / "fake.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    found = [v.split(": ", 1)[1] for v in _violations(fake, src=fake.parents[1])]
    assert found == expected

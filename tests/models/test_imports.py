"""models/ is the bottom layer: it imports nothing from the packages above it (training, serving) nor TF Serving."""

import ast
import pathlib

import pytest

MODELS = pathlib.Path(__file__).resolve().parents[2] / "models"
ABOVE = ("training", "serving", "tensorflow_serving")


def _imported_modules(tree: ast.AST) -> list:
    """Every module an import statement names, at any depth (function-level imports included)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.py")), ids=lambda p: p.name)
def test_models_import_nothing_above_them(path):
    imported = _imported_modules(ast.parse(path.read_text(), filename=str(path)))
    above = [name for name in imported if name.split(".")[0] in ABOVE]
    assert not above, f"{path.name} imports {above}"


def test_the_check_sees_imports_inside_functions():
    tree = ast.parse("def f():\n    from training import metrics\n    import serving.export\n")
    assert _imported_modules(tree) == ["training", "serving.export"]

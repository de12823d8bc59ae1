"""No public signature carries a test hook (issue 13): a public function or method of ``mcdrop`` takes no
parameter whose name starts with an underscore. Tests inject faults another way (for Ray jobs,
``mcdrop.distributed._TEST_HOOKS``)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mcdrop"


def _public_functions(tree):
    """(qualified name, node) of the functions and methods reachable without a private name."""
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if child.name.startswith("_") and not (child.name.startswith("__") and child.name.endswith("__")):
                    continue
                name = f"{prefix}{child.name}"
                if isinstance(child, ast.ClassDef):
                    yield from walk(child, name + ".")
                else:
                    yield name, child
    yield from walk(tree, "")


def test_no_public_signature_takes_a_private_parameter():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for name, node in _public_functions(ast.parse(path.read_text())):
            args = node.args
            private = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg.startswith("_")]
            if private:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}: {name}({', '.join(private)})")
    assert offenders == []


def test_the_check_sees_a_hook():
    tree = ast.parse("def score(x, *, _on_group=None):\n    pass\nclass A:\n    def f(self, _hook=None):\n        pass\n")
    found = [(name, [a.arg for a in node.args.kwonlyargs + node.args.args if a.arg.startswith("_")])
             for name, node in _public_functions(tree)]
    assert found == [("score", ["_on_group"]), ("A.f", ["_hook"])]

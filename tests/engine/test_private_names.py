"""Only ``mcdrop/engine/_keras_compat.py`` touches Keras' and TensorFlow's private or undocumented names.

An AST scan of every module of ``mcdrop/``. What counts:

* an import from ``keras.src`` or ``tensorflow.python`` (Keras' and TensorFlow's implementation trees);
* an attribute, or a string naming one (``getattr(model, "_outputs_struct")``), from the list of Keras/TF
  internals the engine relies on (issue 13), or any ``experimental_*`` attribute or ``.experimental.``
  namespace of TensorFlow (``tf.random.experimental.stateless_fold_in``, ``strategy.experimental_*``);
* in ``mcdrop/engine/`` (where the user's Keras objects live), ``object.__setattr__``/``__delattr__``, which
  go past Keras' attribute tracking (elsewhere the package uses it on its own frozen dataclasses);
* a filter added to TensorFlow's global logger (``tf.get_logger()``).

``tf.raw_ops`` is *not* counted: it is TensorFlow's documented, versioned API for its kernels.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mcdrop"
COMPAT = PACKAGE / "engine" / "_keras_compat.py"

#: Keras/TF internals by attribute name (what `_keras_compat` wraps).
PRIVATE = {
    "_flatten_layers", "_get_noise_shape", "_keras_history", "_inbound_nodes", "_functional", "_nodes_by_depth",
    "_inputs_struct", "_outputs_struct", "_call_context_args", "_call_has_training_arg", "_seed_generators",
    "_apply_scores", "_keras_mask", "_tracker", "dropout_mask_count", "get_dropout_mask",
    "get_recurrent_dropout_mask", "reset_dropout_mask", "reset_recurrent_dropout_mask", "call_endpoint_fn",
    "stateless_fold_in", "input_tensors",
}
IMPLEMENTATION_TREES = ("keras.src", "tensorflow.python", "tf_keras.src")
#: How modules name the compat module: its accessors may share a name with what they wrap.
ACCESSORS = ("compat", "_keras_compat", "mcdrop.engine._keras_compat")

#: Uses in modules other engineers are rewriting in parallel (issue 13 item 1): the lead substitutes the
#: accessors at merge (``fold_in``, ``outputs_structure``, ``keras_history_layer``) and empties this set.
#: The test fails both on a new private use and on a listed one that is gone, so the list cannot go stale.
PENDING: set[tuple[str, str]] = set()


def _uses(path: Path, root: Path = PACKAGE) -> set[tuple[str, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(root).as_posix()
    in_engine = rel.startswith("engine/")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(IMPLEMENTATION_TREES):
            found.add((rel, f"import from {node.module}"))
        elif isinstance(node, ast.Import):
            found.update((rel, f"import {a.name}") for a in node.names if a.name.startswith(IMPLEMENTATION_TREES))
        elif isinstance(node, ast.Attribute) and _dotted(node.value) not in ACCESSORS:
            if node.attr in PRIVATE or node.attr.startswith("experimental_"):
                found.add((rel, node.attr))
            if node.attr == "experimental" or (node.attr == "src" and _dotted(node.value) == "keras"):
                found.add((rel, ".experimental." if node.attr == "experimental" else "keras.src"))
            if in_engine and node.attr in ("__setattr__", "__delattr__") and _dotted(node.value) == "object":
                found.add((rel, f"object.{node.attr}"))
            if node.attr == "addFilter" and "get_logger" in ast.unparse(node.value):
                found.add((rel, "tf.get_logger().addFilter"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in PRIVATE:
            found.add((rel, node.value))
    return found


def _dotted(node) -> str:
    return ast.unparse(node)


def _all_uses() -> set[tuple[str, str]]:
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != COMPAT:
            found |= _uses(path)
    return found


def test_no_module_but_keras_compat_uses_a_private_keras_or_tf_name():
    found = _all_uses()
    new = sorted(found - PENDING)
    assert not new, ("private Keras/TF names outside mcdrop/engine/_keras_compat.py (add an accessor there): "
                     f"{new}")
    gone = sorted(PENDING - found)
    assert not gone, f"these are no longer used: remove them from PENDING: {gone}"


def test_the_scan_sees_what_it_looks_for(tmp_path):
    """The scan itself can fail: each kind of use, added to an engine module, is found."""
    module = PACKAGE / "engine" / "view.py"
    text = module.read_text()
    probes = {
        "from keras.src.layers import Dense": "import from keras.src.layers",
        "x = model._nodes_by_depth": "_nodes_by_depth",
        "x = getattr(model, '_outputs_struct', None)": "_outputs_struct",
        "x = tf.random.experimental.stateless_fold_in(k, 1)": "stateless_fold_in",
        "x = strategy.experimental_local_results(v)": "experimental_local_results",
        "object.__setattr__(layer, 'call', f)": "object.__setattr__",
        "tf.get_logger().addFilter(f)": "tf.get_logger().addFilter",
        "x = layer.call_endpoint_fn": "call_endpoint_fn",
    }
    for line, expected in probes.items():
        probe = tmp_path / "engine" / "probe.py"
        probe.parent.mkdir(exist_ok=True)
        probe.write_text(text + "\n" + line + "\n")
        assert ("engine/probe.py", expected) in _uses(probe, tmp_path), line
    probe.write_text(text + "\nx = tf.raw_ops.StatelessRandomUniformV2\n")
    assert _uses(probe, tmp_path) == set()  # view.py itself is clean, and tf.raw_ops is public


def test_keras_compat_itself_holds_them():
    """The module the scan exempts is where the names went (a sanity check on the exemption)."""
    assert {"_nodes_by_depth", "_keras_history", "stateless_fold_in", "call_endpoint_fn"} <= {
        name for _, name in _uses(COMPAT)}

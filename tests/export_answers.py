"""Answers every signature of SavedModel exports in a process that cannot import TensorFlow Probability.

Stock TensorFlow Serving has no TFP, so an export must load and answer with core TensorFlow alone. Run as a
script, this process blocks any import of `tensorflow_probability`, then reads one JSON request a line on stdin,

    {"export": "<version directory>", "x": "<a .npy of inputs [batch, ...] as the export takes them>"},

loads the export, calls each of its signatures with inputs made from its input specs (`x` the given batch,
`num_samples` 3, `seed` [1, 2], `z` zeros [batch, ...], `inputs` the batch as serialized tf.Examples with a float
feature `x`, nothing for `model_info`) and writes one JSON line on stdout:

    {"signatures": {name: {output: {"shape": [...], "finite": bool}}}, "info": <model_info's JSON>,
     "tfp_imported": bool}

or {"error": "<traceback>"}. Used by tests/test_matrix.py: one process answers every export a pytest worker makes.
"""

import importlib.abc
import json
import sys
import traceback

NUM_SAMPLES = 3
SEED = (1, 2)


class _BlockTfp(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "tensorflow_probability":
            raise ImportError(f"{name}: blocked (an export must answer without TensorFlow Probability)")


def _inputs(function, x, tf, np):
    """The keyword arguments of a signature call, from its input specs."""
    _, specs = function.structured_input_signature
    batch = x.shape[0]
    values = {}
    for name, spec in specs.items():
        if name == "x":
            values[name] = tf.constant(x, spec.dtype)
        elif name == "num_samples":
            values[name] = tf.constant(NUM_SAMPLES, spec.dtype)
        elif name == "seed":
            values[name] = tf.constant(SEED, spec.dtype)
        elif name == "z":
            values[name] = tf.zeros([batch] + spec.shape.as_list()[1:], spec.dtype)
        elif name == "inputs":
            examples = [tf.train.Example(features=tf.train.Features(feature={"x": tf.train.Feature(
                float_list=tf.train.FloatList(value=row.reshape(-1).tolist()))})).SerializeToString() for row in x]
            values[name] = tf.constant(examples)
        else:
            raise ValueError(f"no test input for {name!r} ({spec})")
    return values


def _answer(request, tf, np) -> dict:
    x = np.load(request["x"])
    loaded = tf.saved_model.load(request["export"])
    out = {"signatures": {}, "info": None}
    for name, function in sorted(loaded.signatures.items()):
        outputs = function(**_inputs(function, x, tf, np))
        if name == "model_info":
            out["info"] = json.loads(outputs["info"].numpy().decode())
            continue
        out["signatures"][name] = {
            key: {"shape": list(value.shape),
                  "finite": bool(np.all(np.isfinite(value.numpy()))) if value.dtype.is_floating else True}
            for key, value in outputs.items()}
    out["tfp_imported"] = "tensorflow_probability" in sys.modules
    return out


def main():
    sys.meta_path.insert(0, _BlockTfp())
    import numpy as np
    import tensorflow as tf

    # Each signature runs once here: Grappler's rewrite of its graph on the first call would take longer than the
    # call, and what is checked (loads without TFP, shapes, finite values) does not depend on it.
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            reply = _answer(json.loads(line), tf, np)
        except Exception:  # noqa: BLE001 - every failure goes back to the test, which reports it
            reply = {"error": traceback.format_exc()}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()

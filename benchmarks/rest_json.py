"""The REST API's JSON work on large bodies: our request parser against the json module's, and answer writing.

    python benchmarks/rest_json.py [--rows 1024]

A `:predict` body becomes a document before it becomes a tensor. `codec.parse_json_document` reads it with orjson
when orjson reads it as the json module does, and otherwise with the json module (`codec._parse_with_json`: NaN,
Infinity, integers beyond 64 bits, anything malformed). Measured in one run, calls alternating, as median wall
times, for three bodies of `--rows` MNIST-sized rows (784 numbers each) as clients write them: pixels as integers
0-255, pixels scaled to [0, 1] and printed by `json.dumps` (17 significant digits), and the same with four
decimals. Printed: our parser's time, the json module's and their ratio, then the time to turn the parsed body
into the input array (`json_to_predict_inputs`) and to write an answer of the same size in TF Serving's format
(`arrays_to_predict_json`, row format, one 784-wide output per row).
"""

import argparse
import json
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.predictive import interleaved_medians  # noqa: E402
from serving import codec  # noqa: E402


def bodies(rows: int, seed: int = 0) -> dict:
    """name -> (`{"instances": ...}` body, the float32 array it holds)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(rows, 784))
    scaled = (pixels / 255.0).astype(np.float32)
    rounded = np.round(pixels / 255.0, 4)
    return {
        "integers 0-255": (json.dumps({"instances": pixels.tolist()}).encode(), pixels.astype(np.float32)),
        "floats, json.dumps": (json.dumps({"instances": scaled.tolist()}).encode(), scaled),
        "floats, 4 decimals": (json.dumps({"instances": rounded.tolist()}).encode(), rounded.astype(np.float32)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per function and body")
    args = parser.parse_args()
    print(f"one process, calls alternating; bodies of {args.rows} rows x 784 numbers")
    print()
    print("| body | MiB | ours ms | json module ms | vs json module | to array ms | answer writing ms |")
    print("|---|---|---|---|---|---|---|")
    for name, (body, expected) in bodies(args.rows).items():
        doc = codec.parse_json_document(body)
        arrays, _ = codec.json_to_predict_inputs(doc, {"x": codec.DT_FLOAT}, "")
        np.testing.assert_array_equal(arrays["x"], expected)  # the same numbers, whichever parser read them
        skeleton = codec._skeleton(body)
        times = interleaved_medians({
            "ours": lambda: codec.parse_json_document(body),
            "json": lambda: codec._parse_with_json(body, skeleton),
            "array": lambda: codec.json_to_predict_inputs(doc, {"x": codec.DT_FLOAT}, ""),
            "write": lambda: codec.arrays_to_predict_json({"y": expected}, codec.ROW_FORMAT),
        }, budget=args.budget)
        print(f"| {name} | {len(body) / 2 ** 20:.1f} | {1e3 * times['ours']:.0f} | {1e3 * times['json']:.0f} | "
              f"{times['json'] / times['ours']:.1f}x | {1e3 * times['array']:.0f} | {1e3 * times['write']:.0f} |")


if __name__ == "__main__":
    main()

"""Peak memory of REST bodies: the largest body the limit admits, and concurrent bodies under
`--rest_api_num_threads`.

The largest body: for each kind of `:predict` body of exactly `--grpc_max_message_bytes` (64 MiB, the default),
a fresh process turns it into its input arrays -- `json_reader.parse_json_document` then `json_to_predict_inputs`
("whole": every number a Python object first, 24-32 bytes each) and `json_reader.parse_predict_document` then
`json_to_predict_inputs` ("chunks": the inputs array read about a MiB at a time, what the server does). Printed:
the growth of the process's peak resident memory (VmHWM, reset after the body is built) and its ratio to the
body, and the seconds. The gzip row posts the body gzip-compressed: its growth includes the decompressed body.

Concurrent bodies: a JSON body becomes Python objects before it becomes a tensor, and that happens before the
data plane's `--max_concurrent_requests` admission; `--rest_api_num_threads` (TF Serving's flag, default four
per CPU) lets that many requests be parsed and run at once while the rest wait with their bodies read. For each
thread count, one fresh server process serves TF Serving's `saved_model_half_plus_two_cpu` test model;
`--clients` concurrent clients each POST one `:predict` body of about `--body_mib` MiB of `"instances"`; every
answer is checked (y = x / 2 + 2). Printed: the growth of the server's peak resident memory (VmHWM) over its
peak after a small warm-up request, the wall time for all requests, and the ratios against the unbounded-like
setting (as many threads as clients).

    python benchmarks/rest_memory.py [--clients 8] [--body_mib 4] [--threads 1,2,8]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import requests

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serving.process import ServerProcess, rss_kib  # noqa: E402

MODEL = REPO.parent / "shared" / "fixtures" / "tf_serving_testdata" / "saved_model_half_plus_two_cpu"
MAX_BODY_BYTES = 64 * 2 ** 20  # --grpc_max_message_bytes' default, the largest REST body
# The largest body's kinds: (numbers, layout). Rows of 64 numbers (of one: "single"); short floats ("0.3") and
# one-digit integers are the most numbers, so the most Python objects, per byte.
LARGEST_CASES = {
    "instances, short floats": ("short", "instances"),
    "instances, 1-digit ints": ("int", "instances"),
    "instances, long floats": ("long", "instances"),
    "inputs, short floats": ("short", "inputs"),
    "instances, named rows": ("short", "named"),
    "instances, rows of one int ([0])": ("int", "single"),
    "instances, short floats, gzip": ("short", "gzip"),
}


def _body(mib: float, seed: int) -> tuple[bytes, np.ndarray]:
    """A `{"instances": [...]}` body of about `mib` MiB and the numbers in it (float32-exact)."""
    count = int(mib * 2 ** 20 / 9)  # "-0.1234, " is 9 bytes
    values = np.round(np.random.default_rng(seed).uniform(-1, 1, count), 4)
    return json.dumps({"instances": values.tolist()}).encode(), values.astype(np.float32)


def measure(threads: int, bodies, log_dir: pathlib.Path) -> tuple[float, float]:
    """(peak memory growth in MiB, seconds for all requests) for one server with `threads` REST threads."""
    server = ServerProcess(["--model_name=half_plus_two", f"--model_base_path={MODEL}",
                            f"--rest_api_num_threads={threads}", "--grpc_max_message_bytes=268435456",
                            "--max_batch_rows=100000000"],
                           log_dir / f"threads_{threads}.log")
    url = f"{server.rest}/v1/models/half_plus_two:predict"
    try:
        deadline = time.monotonic() + 60
        while True:  # the REST port opens just after the gRPC one the harness waits for
            try:
                warm = requests.post(url, json={"instances": [1.0, 2.0]}, timeout=60)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert warm.json() == {"predictions": [2.5, 3.0]}, warm.text
        before = rss_kib(server.pid, "VmHWM")
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda body: requests.post(url, data=body[0], timeout=600), bodies))
        seconds = time.perf_counter() - start
        for answer, (_, values) in zip(answers, bodies):
            assert answer.status_code == 200, answer.text[:200]
            np.testing.assert_allclose(answer.json()["predictions"], values / 2 + 2, rtol=1e-6)
        growth = (rss_kib(server.pid, "VmHWM") - before) / 1024
        assert server.alive()
        return growth, seconds
    finally:
        server.stop()


def _largest_body(numbers: str, layout: str) -> bytes:
    """A `:predict` body of exactly MAX_BODY_BYTES: rows of 64 numbers or one (997 distinct rows, repeated),
    padded with spaces before the final brace."""
    rng = np.random.default_rng(0)
    formats = {"short": (b"%.1f", lambda n: rng.uniform(-1, 1, n)), "int": (b"%d", lambda n: rng.integers(0, 10, n)),
               "long": (b"%.9f", lambda n: rng.uniform(-1, 1, n))}
    spelling, draw = formats[numbers]
    rows = []
    for i in range(997):
        row = b"[" + b", ".join(spelling % v for v in draw(1 if layout == "single" else 64)) + b"]"
        rows.append(b'{"x": %s, "w": %d}' % (row, i % 10) if layout == "named" else row)
    out = bytearray(b'{"inputs": [' if layout == "inputs" else b'{"instances": [')
    i = 0
    while len(out) + len(rows[i % len(rows)]) + 8 < MAX_BODY_BYTES:
        out += (b", " if i else b"") + rows[i % len(rows)]
        i += 1
    out += b"]"
    out += b" " * (MAX_BODY_BYTES - len(out) - 1) + b"}"
    return bytes(out)


def _peak_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def convert_largest(case: str, reader: str) -> dict:
    """In this process: (peak memory growth MiB, seconds) of turning the largest body of `case` into its input
    arrays with the `reader` ("whole" or "chunks")."""
    from serving import rest  # pylint: disable=import-outside-toplevel
    from serving.codec import dtypes, json_reader, json_tensors  # pylint: disable=import-outside-toplevel

    numbers, layout = LARGEST_CASES[case]
    body = _largest_body(numbers, layout)
    if layout == "gzip":
        body = gzip.compress(body, 6)
    input_dtypes = {"x": dtypes.DT_FLOAT, "w": dtypes.DT_INT32} if layout == "named" else {"x": dtypes.DT_FLOAT}
    read = json_reader.parse_predict_document if reader == "chunks" else json_reader.parse_json_document
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # forget the peak of building the body: VmHWM restarts from VmRSS
    before = _peak_mib()
    start = time.perf_counter()
    if layout == "gzip":
        body = rest._gunzip(body, MAX_BODY_BYTES)  # pylint: disable=protected-access
    arrays, _ = json_tensors.json_to_predict_inputs(read(body), input_dtypes, "")
    seconds = time.perf_counter() - start
    assert arrays["x"].shape[1:] == ((1,) if layout == "single" else (64,)) and arrays["x"].dtype == np.float32
    return {"growth": _peak_mib() - before, "seconds": seconds}


def print_largest():
    mib = MAX_BODY_BYTES / 2 ** 20
    print(f"The largest body the limit admits ({mib:.0f} MiB) to its input arrays, one fresh process each\n")
    print("| body | whole: peak MiB | ratio to body | seconds | chunks: peak MiB | ratio to body | seconds |")
    print("|---|---|---|---|---|---|---|")
    for case in LARGEST_CASES:
        cells = []
        for reader in ("whole", "chunks"):
            result = subprocess.run([sys.executable, __file__, "--convert_largest", case, "--reader", reader],
                                    capture_output=True, text=True, check=True, timeout=600)
            measured = json.loads(result.stdout.strip().splitlines()[-1])
            cells += [f"{measured['growth']:.0f}", f"{measured['growth'] / mib:.1f}x", f"{measured['seconds']:.1f}"]
        print(f"| {case} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--body_mib", type=float, default=4.0)
    parser.add_argument("--threads", default="1,2,8", help="--rest_api_num_threads values; the last is the "
                        "reference (as many as clients: no request waits)")
    parser.add_argument("--tables", default="largest,concurrent", help="which tables to print")
    parser.add_argument("--convert_largest", help=argparse.SUPPRESS)  # one measurement, in a fresh process
    parser.add_argument("--reader", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.convert_largest:
        print(json.dumps(convert_largest(args.convert_largest, args.reader)))
        return
    tables = args.tables.split(",")
    if "largest" in tables:
        print_largest()
    if "concurrent" not in tables:
        return
    if "largest" in tables:
        print()
    bodies = [_body(args.body_mib, seed) for seed in range(args.clients)]
    print(f"{args.clients} concurrent POSTs of {len(bodies[0][0]) / 2 ** 20:.1f} MiB of JSON each to one server "
          "process (half_plus_two)\n")
    print("| --rest_api_num_threads | peak memory growth MiB | seconds for all | memory vs reference | "
          "time vs reference |")
    print("|---|---|---|---|---|")
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as logs:
        results = {t: measure(t, bodies, pathlib.Path(logs)) for t in threads}
    reference = results[threads[-1]]
    for t in threads:
        growth, seconds = results[t]
        print(f"| {t} | {growth:.0f} | {seconds:.2f} | {growth / reference[0]:.2f}x | {seconds / reference[1]:.2f}x |")


if __name__ == "__main__":
    main()

"""Peak server memory under concurrent large REST bodies, with `--rest_api_num_threads` bounding the parses.

A JSON body becomes Python objects before it becomes a tensor (a float object and a list slot per number, a
list per row: up to ~27x the body's bytes), and that happens before the data plane's `--max_concurrent_requests`
admission. With one thread per connection and no bound, N concurrent bodies cost N times that at once; `--rest_api_num_threads`
(TF Serving's flag, default four per CPU) lets that many requests be parsed and run at once while the rest wait
with their bodies read. The parse holds Python's GIL, so running parses side by side buys no throughput.

For each thread count, one fresh server process serves TF Serving's `saved_model_half_plus_two_cpu` test model;
`--clients` concurrent clients each POST one `:predict` body of about `--body_mib` MiB of `"instances"`; every
answer is checked (y = x / 2 + 2). Printed: the growth of the server's peak resident memory (VmHWM) over its
peak after a small warm-up request, the wall time for all requests, and the ratios against the unbounded-like
setting (as many threads as clients).

    python benchmarks/rest_memory.py [--clients 8] [--body_mib 4] [--threads 1,2,8]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import pathlib
import sys
import tempfile
import time

import numpy as np
import requests

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serving.process import ServerProcess, rss_kib  # noqa: E402

MODEL = REPO.parent / "shared" / "fixtures" / "tf_serving_testdata" / "saved_model_half_plus_two_cpu"


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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--body_mib", type=float, default=4.0)
    parser.add_argument("--threads", default="1,2,8", help="--rest_api_num_threads values; the last is the "
                        "reference (as many as clients: no request waits)")
    args = parser.parse_args()
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

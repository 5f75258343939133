"""Metrics, exported in Prometheus' text format when the monitoring config enables it.

Metric names follow TF Serving's exporter, which turns `/tensorflow/serving/request_count` into
`:tensorflow:serving:request_count`. Metrics only this server has are named `:vizoo:serving:*`;
`:vizoo:serving:signature_runs` (graph runs per model and signature) and
`:vizoo:serving:batch_size` (rows per graph run) are how one sees batching merge requests: N
merged requests make one run of N rows.
"""

import threading
from typing import Dict, Sequence, Tuple

# Buckets for sizes (rows per run, examples per request): powers of two, as TF Serving uses.
SIZE_BUCKETS = tuple(2 ** i for i in range(15))
# Buckets for latencies in microseconds: TF Serving's exponential(10, 1.8) scale, 33 limits, exactly (labelled
# le="32.4", le="58.32", ... as its exporter prints doubles).
LATENCY_BUCKETS = tuple(10.0 * 1.8 ** i for i in range(33))


def _number(value: float) -> str:
    """A counter or gauge value as TF Serving's exporter prints its int64s (`%d`: 1234567, not 1.23457e+06)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    escaped = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, escaped)) + "}"


class Counter:
    """A monotonically increasing count per label combination."""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str]):
        self.name, self.help, self.label_names = name, help_text, tuple(label_names)
        self._values: Dict[Tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels, amount: float = 1.0):
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def render(self):
        yield f"# TYPE {self.name} counter"
        with self._lock:
            items = sorted(self._values.items())
        for labels, value in items:
            yield f"{self.name}{_label_text(self.label_names, labels)} {_number(value)}"


class Gauge(Counter):
    """A value that goes up and down."""

    def dec(self, *labels, amount: float = 1.0):
        self.inc(*labels, amount=-amount)

    def set(self, value: float, *labels):
        with self._lock:
            self._values[labels] = float(value)

    def render(self):
        for line in super().render():
            yield line.replace(" counter", " gauge", 1) if line.startswith("#") else line


class Histogram:
    """Counts of observations in cumulative buckets, plus their sum and count."""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str],
                 buckets: Sequence[float]):
        self.name, self.help, self.label_names = name, help_text, tuple(label_names)
        self.buckets = tuple(buckets)
        self._values: Dict[Tuple[str, ...], list] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *labels):
        with self._lock:
            counts = self._values.setdefault(labels, [0] * (len(self.buckets) + 1) + [0.0])
            for i, bound in enumerate(self.buckets):
                if value < bound:  # TF's histograms: bucket i holds [limit_{i-1}, limit_i)
                    counts[i] += 1
                    break
            else:
                counts[len(self.buckets)] += 1
            counts[-1] += value

    def render(self):
        yield f"# TYPE {self.name} histogram"
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._values.items())
        for labels, counts in items:
            cumulative = 0
            for bound, count in zip(self.buckets + (float("inf"),), counts):
                cumulative += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                label_text = _label_text(self.label_names + ("le",), labels + (le,))
                yield f"{self.name}_bucket{label_text} {cumulative}"
            base = _label_text(self.label_names, labels)
            yield f"{self.name}_sum{base} {counts[-1]:g}"
            yield f"{self.name}_count{base} {cumulative}"


class Metrics:
    """The server's metrics (one instance per server process)."""

    def __init__(self):
        self.request_count = Counter(
            ":tensorflow:serving:request_count", "The total number of requests.",
            ("model_name", "status"))
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"), LATENCY_BUCKETS)
        self.request_example_counts = Histogram(
            ":tensorflow:serving:request_example_counts",
            "The number of tensorflow.Examples per request.", ("model",), SIZE_BUCKETS)
        self.signature_runs = Counter(
            ":vizoo:serving:signature_runs", "Graph runs, per model and signature.",
            ("model_name", "signature_name"))
        self.batch_size = Histogram(
            ":vizoo:serving:batch_size", "Rows per graph run (after batching, with padding).",
            ("model_name", "signature_name"), SIZE_BUCKETS)
        self.inflight = Gauge(
            ":vizoo:serving:inflight_requests", "Requests being processed.", ())
        self.batch_queue_rows = Gauge(
            ":vizoo:serving:batch_queue_rows", "Rows waiting in batching queues.", ())
        self.rejected = Counter(
            ":vizoo:serving:rejected_requests", "Requests refused because the server is full.",
            ("reason",))

    def on_run(self, model_name: str, signature_name: str, batch_size: int):
        """Hook for `LoadedModel.run`: one graph run of `batch_size` rows."""
        self.signature_runs.inc(model_name, signature_name)
        if batch_size:
            self.batch_size.observe(batch_size, model_name, signature_name)

    def set_batch_queue_rows(self, rows: int):
        """Hook for `BatchScheduler`: rows currently waiting to be batched."""
        self.batch_queue_rows.set(rows)

    def render(self) -> str:
        lines = []
        for metric in (self.request_count, self.request_latency, self.request_example_counts,
                       self.signature_runs, self.batch_size, self.inflight,
                       self.batch_queue_rows, self.rejected):
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


def parse_prometheus_text(text: str) -> Dict[str, float]:
    """Sample name with labels -> value, for tests and tools reading `render()`'s output."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        samples[name] = float(value)
    return samples

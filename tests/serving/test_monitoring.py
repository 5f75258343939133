"""Prometheus text as TF Serving's exporter writes it (`util/prometheus_exporter.cc`)."""

from serving import monitoring


def test_counters_are_whole_numbers_however_large():
    counter = monitoring.Counter(":tensorflow:serving:request_count", "", ("model_name", "status"))
    counter.inc("m", "OK", amount=1234567)
    assert list(counter.render())[-1] == ':tensorflow:serving:request_count{model_name="m",status="OK"} 1234567'


def test_latency_buckets_are_exponential_10_1_8_and_hold_values_below_their_limit():
    histogram = monitoring.Histogram(":tensorflow:serving:request_latency", "", ("model_name",),
                                     monitoring.LATENCY_BUCKETS)
    histogram.observe(10.0, "m")  # TF's bucket i holds [limit_{i-1}, limit_i): 10 is in the le="18" bucket
    histogram.observe(32.2, "m")
    lines = [line for line in histogram.render() if "_bucket" in line]
    limits = [line.split('le="')[1].split('"')[0] for line in lines]
    assert limits[:5] == ["10", "18", "32.4", "58.32", "104.976"] and limits[-1] == "+Inf" and len(limits) == 34
    counts = [int(line.rsplit(" ", 1)[1]) for line in lines]
    assert counts[:3] == [0, 1, 2]

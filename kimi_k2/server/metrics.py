"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library.

Three metric kinds are enough: counters (optionally labelled), histograms with fixed buckets (cumulative
`_bucket{le=…}`, `_sum`, `_count`), and gauges read from a callback at scrape time (queue length and KV blocks
come from the engine's live stats, so they can never drift from it). Every series carries a constant
`model_name` label (the served model name), as vLLM's do, so dashboards can tell several servers apart. All
updates happen on the server's event loop thread; a lock still guards them so a scrape from another thread
sees consistent numbers.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


Labels = tuple[tuple[str, str], ...]  # constant labels of a metric, e.g. (("model_name", "kimi-k2"),)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "", const: Labels = ()) -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in (*const, *zip(names, values))]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Counter:
    def __init__(self, name: str, help_text: str, labelnames: tuple[str, ...] = (), const: Labels = ()) -> None:
        self.name, self.help, self.labelnames, self.const = name, help_text, labelnames, const
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        if amount < 0:
            raise ValueError(f"counter {self.name} can only increase, got {amount}")
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.labelnames:
            items = [((), 0.0)]
        for labels, value in items:
            yield f"{self.name}{_labels(self.labelnames, labels, const=self.const)} {_number(value)}"


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...], const: Labels = ()) -> None:
        if list(buckets) != sorted(buckets):
            raise ValueError(f"histogram {name} buckets must be increasing, got {buckets}")
        self.name, self.help, self.buckets, self.const = name, help_text, tuple(buckets), const
        self._counts = [0] * (len(buckets) + 1)  # last: > largest bucket (+Inf)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value

    @property
    def count(self) -> int:
        return sum(self._counts)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative = 0
        plain = _labels((), (), const=self.const)
        for bound, n in zip((*self.buckets, math.inf), counts):
            cumulative += n
            le = f'le="{_number(bound)}"'
            yield f"{self.name}_bucket{_labels((), (), le, self.const)} {cumulative}"
        yield f"{self.name}_sum{plain} {_number(total)}"
        yield f"{self.name}_count{plain} {cumulative}"


class Gauge:
    """A value read at scrape time from `read()`."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float], const: Labels = ()) -> None:
        self.name, self.help, self.read, self.const = name, help_text, read, const

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        yield f"{self.name}{_labels((), (), const=self.const)} {_number(self.read())}"


class ServerMetrics:
    """Every metric the server exports. Gauges read `stats()`: a dict with the engine's live numbers."""

    def __init__(self, stats: Callable[[], dict[str, float]], prefix: str = "kimi_k2", model_name: str = "") -> None:
        c: Labels = (("model_name", model_name),)
        self.requests = Counter(f"{prefix}_requests_total", "HTTP API requests by endpoint and status code.", ("endpoint", "status"), c)
        self.prompt_tokens = Counter(f"{prefix}_prompt_tokens_total", "Prompt tokens of finished requests.", const=c)
        self.cached_prompt_tokens = Counter(f"{prefix}_cached_prompt_tokens_total", "Prompt tokens served by the prefix cache.", const=c)
        self.generation_tokens = Counter(f"{prefix}_generation_tokens_total", "Generated tokens.", const=c)
        self.finished = Counter(f"{prefix}_request_finish_total", "Finished generations by finish reason.", ("reason",), c)
        self.rejected = Counter(f"{prefix}_requests_rejected_total", "Requests refused because the queue was full.", const=c)
        self.ttft = Histogram(f"{prefix}_time_to_first_token_seconds", "Time from request arrival to the first generated token.", TTFT_BUCKETS, c)
        self.itl = Histogram(f"{prefix}_inter_token_latency_seconds", "Time between consecutive generated tokens of a request.", ITL_BUCKETS, c)
        self.e2e = Histogram(f"{prefix}_e2e_request_latency_seconds", "Time from request arrival to the last token.", E2E_BUCKETS, c)

        def stat(key: str) -> Callable[[], float]:
            return lambda: float(stats().get(key, 0))

        def kv_usage() -> float:
            numbers = stats()
            total = numbers.get("kv_blocks_used", 0) + numbers.get("kv_blocks_free", 0)
            return numbers.get("kv_blocks_used", 0) / total if total else 0.0

        self.gauges = [
            Gauge(f"{prefix}_queue_length", "Requests waiting for the engine (admitted, not yet running).", stat("waiting"), c),
            Gauge(f"{prefix}_requests_running", "Requests the engine is running.", stat("running"), c),
            Gauge(f"{prefix}_requests_in_flight", "Requests admitted by the server and not finished.", stat("in_flight"), c),
            Gauge(f"{prefix}_kv_blocks_used", "Paged KV cache blocks in use.", stat("kv_blocks_used"), c),
            Gauge(f"{prefix}_kv_blocks_free", "Paged KV cache blocks free.", stat("kv_blocks_free"), c),
            Gauge(f"{prefix}_kv_cache_usage_ratio", "Fraction of the paged KV cache's blocks in use (0 to 1).", kv_usage, c),
        ]

    def observe_tokens(self, times: list[float], arrival: float) -> None:
        """Latency histograms from the arrival time and the time each generated token reached the server."""
        if not times:
            return
        self.ttft.observe(times[0] - arrival)
        for earlier, later in zip(times, times[1:]):
            self.itl.observe(later - earlier)
        self.e2e.observe(times[-1] - arrival)

    def render(self) -> str:
        metrics = [self.requests, self.prompt_tokens, self.cached_prompt_tokens, self.generation_tokens, self.finished,
                   self.rejected, self.ttft, self.itl, self.e2e, *self.gauges]
        return "\n".join(line for metric in metrics for line in metric.render()) + "\n"

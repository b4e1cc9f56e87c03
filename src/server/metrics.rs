//! The server's Prometheus metrics (`GET /metrics`, OpenMetrics text): requests by endpoint
//! and status, prompt and generated tokens, queue depth, busy slots, time to first token and
//! per-token latency histograms, prefix-cache hits and misses.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// One request's endpoint and response status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub endpoint: String,
    pub status: u16,
}

/// Every metric, registered once.
pub(crate) struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub prompt_tokens: Counter,
    pub generated_tokens: Counter,
    pub queue_depth: Gauge,
    pub busy_slots: Gauge,
    pub time_to_first_token: Histogram,
    pub token_latency: Histogram,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cached_tokens: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("moxe");
        let requests = Family::<RequestLabels, Counter>::default();
        let m = Metrics {
            requests: requests.clone(),
            prompt_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            queue_depth: Gauge::default(),
            busy_slots: Gauge::default(),
            // 1 ms .. ~65 s and 0.1 ms .. ~6.5 s.
            time_to_first_token: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            token_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cached_tokens: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "HTTP requests by endpoint and status", requests);
        registry.register(
            "prompt_tokens",
            "Prompt tokens of admitted requests",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "generated_tokens",
            "Tokens generated",
            m.generated_tokens.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting for a slot",
            m.queue_depth.clone(),
        );
        registry.register("busy_slots", "Sequence slots in use", m.busy_slots.clone());
        registry.register(
            "time_to_first_token_seconds",
            "From a request's arrival to its first generated token",
            m.time_to_first_token.clone(),
        );
        registry.register(
            "token_latency_seconds",
            "Between consecutive generated tokens of one sequence",
            m.token_latency.clone(),
        );
        registry.register(
            "prefix_cache_hits",
            "Requests that continued from a cached prompt prefix",
            m.cache_hits.clone(),
        );
        registry.register(
            "prefix_cache_misses",
            "Requests that found no cached prefix",
            m.cache_misses.clone(),
        );
        registry.register(
            "prefix_cache_tokens",
            "Prompt tokens not prefilled thanks to the prefix cache",
            m.cached_tokens.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one response.
    pub fn request(&self, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status,
            })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn text(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

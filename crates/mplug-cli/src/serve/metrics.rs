//! Request counters and latency histograms in the Prometheus text format.

use super::engine::BatchStats;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

/// Server metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Records one answered request.
    pub fn record(&self, endpoint: &'static str, status: u16, elapsed: Duration) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *inner.requests.entry((endpoint, status)).or_default() += 1;
        let h = inner.latency.entry(endpoint).or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        let s = elapsed.as_secs_f64();
        for (c, &le) in h.counts.iter_mut().zip(BUCKETS) {
            if s <= le {
                *c += 1;
            }
        }
        h.sum += s;
        h.count += 1;
    }

    /// The Prometheus text exposition.
    pub fn render(
        &self,
        tasks: &str,
        in_flight: usize,
        max_in_flight: usize,
        batches: &[&BatchStats],
        pixels_in_flight: u64,
    ) -> String {
        let total = |f: fn(&BatchStats) -> &std::sync::atomic::AtomicU64| -> u64 {
            batches.iter().map(|b| f(b).load(Ordering::Relaxed)).sum()
        };
        let largest = batches
            .iter()
            .map(|b| b.largest.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = writeln!(out, "# HELP mplug_model_info The tasks the server answers.");
        let _ = writeln!(out, "# TYPE mplug_model_info gauge");
        for task in tasks.split(',') {
            let _ = writeln!(out, "mplug_model_info{{task=\"{task}\"}} 1");
        }
        let _ = writeln!(
            out,
            "# HELP mplug_requests_total HTTP requests answered, by endpoint and status."
        );
        let _ = writeln!(out, "# TYPE mplug_requests_total counter");
        for ((endpoint, status), n) in &inner.requests {
            let _ = writeln!(
                out,
                "mplug_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP mplug_request_duration_seconds Time to answer a request, by endpoint."
        );
        let _ = writeln!(out, "# TYPE mplug_request_duration_seconds histogram");
        for (endpoint, h) in &inner.latency {
            for (c, le) in h.counts.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "mplug_request_duration_seconds_bucket{{endpoint=\"{endpoint}\",le=\"{le}\"}} {c}"
                );
            }
            let _ = writeln!(
                out,
                "mplug_request_duration_seconds_bucket{{endpoint=\"{endpoint}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "mplug_request_duration_seconds_sum{{endpoint=\"{endpoint}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "mplug_request_duration_seconds_count{{endpoint=\"{endpoint}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP mplug_in_flight_requests Model requests accepted and not yet answered."
        );
        let _ = writeln!(out, "# TYPE mplug_in_flight_requests gauge");
        let _ = writeln!(out, "mplug_in_flight_requests {in_flight}");
        let _ = writeln!(
            out,
            "# HELP mplug_max_in_flight_requests The in-flight limit (over it: 503)."
        );
        let _ = writeln!(out, "# TYPE mplug_max_in_flight_requests gauge");
        let _ = writeln!(out, "mplug_max_in_flight_requests {max_in_flight}");
        let _ = writeln!(
            out,
            "# HELP mplug_pixels_in_flight Pixels of the images being decoded now."
        );
        let _ = writeln!(out, "# TYPE mplug_pixels_in_flight gauge");
        let _ = writeln!(out, "mplug_pixels_in_flight {pixels_in_flight}");
        let _ = writeln!(out, "# HELP mplug_batches_total Model calls made.");
        let _ = writeln!(out, "# TYPE mplug_batches_total counter");
        let _ = writeln!(out, "mplug_batches_total {}", total(|b| &b.batches));
        let _ = writeln!(
            out,
            "# HELP mplug_batched_requests_total Requests answered by those calls."
        );
        let _ = writeln!(out, "# TYPE mplug_batched_requests_total counter");
        let _ = writeln!(out, "mplug_batched_requests_total {}", total(|b| &b.items));
        let _ = writeln!(
            out,
            "# HELP mplug_largest_batch The most requests one model call has answered."
        );
        let _ = writeln!(out, "# TYPE mplug_largest_batch gauge");
        let _ = writeln!(out, "mplug_largest_batch {largest}");
        out
    }
}

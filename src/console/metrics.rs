//! `/metrics` in Prometheus text format (prometheus-client), built from the counters at each
//! scrape: the counters live in `Stats` as plain atomics on the hot path, so nothing is
//! counted twice and a scrape costs nothing between scrapes.

use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::{HttpResponse, web};
use mailroute_actors::messages::ListPeers;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::ConsoleState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Peer {
    peer: String,
}

/// A histogram read from the engine's atomics at scrape time.
#[derive(Debug)]
struct Latency((f64, u64, Vec<(f64, u64)>));

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = &self.0;
        encoder.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn counter(value: &AtomicU64) -> Counter {
    let c = Counter::default();
    c.inc_by(value.load(Ordering::Relaxed));
    c
}

/// One counter per label value, read from the atomics.
fn counters<L>(
    values: &[(&'static str, &AtomicU64)],
    label: fn(&'static str) -> L,
) -> Family<L, Counter>
where
    L: Clone + std::hash::Hash + Eq,
{
    let family = Family::<L, Counter>::default();
    for (name, value) in values {
        family
            .get_or_create(&label(name))
            .inc_by(value.load(Ordering::Relaxed));
    }
    family
}

pub async fn scrape(state: web::Data<ConsoleState>) -> HttpResponse {
    let s = &state.stats;
    let mut registry = Registry::with_prefix("mailroute");

    let messages = counters(
        &[
            ("delivered", &s.delivered),
            ("handed_over", &s.handed_over),
            ("held", &s.held),
            ("failed", &s.failed),
            ("duplicate", &s.duplicates_dropped),
        ],
        |outcome| Outcome { outcome },
    );
    registry.register("messages", "Outbox messages by confirmed outcome", messages);
    registry.register(
        "consumed",
        "Deliveries taken from the outbox, redeliveries included",
        counter(&s.consumed),
    );
    registry.register(
        "relayed",
        "Messages moved from this instance's handover queue into its outbox",
        counter(&s.relayed),
    );
    registry.register(
        "stale_dropped",
        "Messages dropped before their publish because the consumer run that took them ended (the broker redelivers them)",
        counter(&s.stale_dropped),
    );
    registry.register(
        "publish_errors",
        "Outcomes the broker did not confirm (the original was requeued)",
        counter(&s.publish_errors),
    );
    registry.register(
        "peers_expired",
        "Peers forgotten for silence (peer-timeout, or not back after a reload)",
        counter(&s.peers_expired),
    );
    registry.register(
        "restarts",
        "Actor restarts (reconnects after a broker error)",
        counter(&s.restarts),
    );
    let sent = counters(
        &[
            ("announcement", &s.announcements_sent),
            ("heartbeat", &s.heartbeats_sent),
            ("digest", &s.digests_sent),
            ("ask", &s.asks_sent),
            ("answer", &s.asks_answered),
            ("challenge", &s.challenges_sent),
            ("present", &s.challenges_answered),
        ],
        |kind| Kind { kind },
    );
    registry.register(
        "cluster_messages_sent",
        "Cluster messages this instance published, by kind",
        sent,
    );
    let received = counters(
        &[
            ("announcement", &s.announcements_received),
            ("digest", &s.digests_received),
            ("present", &s.presences_proven),
        ],
        |kind| Kind { kind },
    );
    registry.register(
        "cluster_messages_received",
        "Cluster messages this instance read, by kind",
        received,
    );
    let dropped = counters(
        &[
            ("oversized", &s.dropped_oversized),
            ("bad_magic", &s.dropped_bad_magic),
            ("bad_version", &s.dropped_bad_version),
            ("garbage", &s.dropped_garbage),
            ("unsigned", &s.dropped_unsigned),
            ("bad_signature", &s.dropped_bad_signature),
            ("stale", &s.dropped_stale),
            ("refused", &s.dropped_refused),
            ("replayed", &s.dropped_replayed),
        ],
        |reason| Reason { reason },
    );
    registry.register(
        "dropped_cluster_frames",
        "Cluster messages dropped, by reason",
        dropped,
    );
    registry.register(
        "handover_seconds",
        "From publishing a handover copy to the broker's confirm of it",
        Latency(s.handover_seconds.read()),
    );
    let paused = Gauge::<i64>::default();
    paused.set(i64::from(s.paused.load(Ordering::Relaxed) == 1));
    registry.register("paused", "1 while drained for maintenance", paused);
    let deaf = Gauge::<i64>::default();
    deaf.set(i64::from(s.deaf.load(Ordering::Relaxed) == 1));
    registry.register(
        "deaf",
        "1 while this instance hears nothing on the cluster exchange, not even itself (nobody expires meanwhile)",
        deaf,
    );
    let behind = Gauge::<i64>::default();
    behind.set(i64::from(s.digest_behind.load(Ordering::Relaxed) == 1));
    registry.register(
        "digest_behind",
        "1 while this instance leads the heartbeat digest but reads the queue too late to digest (nobody expires meanwhile)",
        behind,
    );
    let conflicts = Gauge::<i64>::default();
    conflicts.set(i64::try_from(s.ip_conflicts.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    registry.register("ip_conflicts", "IPs two instances claim now", conflicts);

    let peers = state.registry.send(ListPeers).await.unwrap_or_default();
    let count = Gauge::<i64>::default();
    count.set(i64::try_from(peers.len()).unwrap_or(i64::MAX));
    registry.register("peers", "Live peers in this instance's registry", count);
    let age = Family::<Peer, Gauge<f64, AtomicU64>>::default();
    for p in &peers {
        age.get_or_create(&Peer {
            peer: p.announcement.name.clone(),
        })
        .set(p.last_seen.as_secs_f64());
    }
    registry.register(
        "announce_age_seconds",
        "Time since each peer's last announcement",
        age,
    );

    let mut body = String::new();
    match encode(&mut body, &registry) {
        Ok(()) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(body),
        Err(error) => HttpResponse::InternalServerError().body(error.to_string()),
    }
}

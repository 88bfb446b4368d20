//! Micro-benchmarks: the route decision against the size of the ownership table, and `ips`
//! extraction against the body size and where `ips` stands.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroute_actors::mail::routing::{
    MessageFacts, OwnershipTable, PeerRoute, RoutePolicy, Unroutable, decide, extract_ips,
};
use mailroute_actors::traffic::mailerq_json;

use crate::b_ip;
use crate::measure::human;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Micro {
    pub name: String,
    pub ns_per_op: f64,
}

pub fn micro_benches() -> Vec<Micro> {
    let mut out = Vec::new();
    let policy = RoutePolicy {
        default_ips: vec![],
        max_hops: 2,
        unroutable: Unroutable::Hold,
        max_hold: Duration::from_secs(3600),
    };
    for size in [10u32, 1_000, 100_000] {
        let local = vec![IpAddr::from([192, 168, 255, 1])];
        let table = OwnershipTable::new(&local);
        let peer = Arc::new(PeerRoute {
            name: "p".into(),
            outbox: "p.outbox".into(),
            broker: "b".into(),
            via: mailroute_actors::mail::routing::Via::LocalBroker,
        });
        let ips: Vec<IpAddr> = (0..size)
            .map(|i| IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()))
            .collect();
        table.replace_peers(&local, ips.iter().map(|ip| (*ip, peer.clone())));
        let facts: Vec<MessageFacts> = (0..1024)
            .map(|i| MessageFacts {
                ips: Some(vec![ips[(i * 7919) % ips.len()]]),
                ..MessageFacts::default()
            })
            .collect();
        let rounds = 1_000_000;
        let started = Instant::now();
        for i in 0..rounds {
            std::hint::black_box(decide(
                std::hint::black_box(&facts[i % facts.len()]),
                &policy,
                &table,
            ));
        }
        out.push(Micro {
            name: format!("route decision, table of {size} IPs"),
            ns_per_op: started.elapsed().as_nanos() as f64 / rounds as f64,
        });
    }
    // `ips` before the MIME part (parsing stops there) and after it (the whole body is read).
    for (size, ips_last) in [
        (1024usize, false),
        (1 << 20, false),
        (1024, true),
        (1 << 20, true),
    ] {
        let listed = [b_ip()];
        let mut body = mailerq_json("x", (!ips_last).then_some(&listed[..]), size);
        if ips_last {
            body.pop();
            body.extend_from_slice(format!(r#","ips":["{}"]}}"#, b_ip()).as_bytes());
        }
        let rounds = if size > 100_000 { 200 } else { 200_000 };
        let started = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(extract_ips(std::hint::black_box(&body)).ok());
        }
        let ns = started.elapsed().as_nanos() as f64 / rounds as f64;
        // A rate only where the whole body is read; with `ips` first it is not.
        let name = if ips_last {
            format!(
                "ips extraction, {} body, ips last ({:.0} MiB/s)",
                human(size),
                size as f64 / ns * 1e9 / 1048576.0
            )
        } else {
            format!(
                "ips extraction, {} body, ips first (rest not read)",
                human(size)
            )
        };
        out.push(Micro {
            name,
            ns_per_op: ns,
        });
    }
    out
}

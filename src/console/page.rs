//! `/`: the cluster page, server-rendered (maud), refreshing itself every few seconds. This
//! instance first, then every live peer with a link to its own console; IPs two instances
//! claim are shown in red, and a peer with other cluster settings is flagged.

use std::collections::HashMap;
use std::net::IpAddr;

use actix_web::web;
use mailroute_actors::messages::ListPeers;
use mailroute_actors::wire::now_ms;
use maud::{DOCTYPE, Markup, html};

use super::ConsoleState;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1rem;color:#222}\
table{border-collapse:collapse;width:100%;font-size:.9rem}\
th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}\
th{background:#f4f4f4}.conflict{color:#b00;font-weight:bold}.drift{color:#b60}\
.me{background:#f0f7ff}.wrap{overflow-x:auto}code{font-size:.85rem}";

struct Row {
    name: String,
    version: String,
    uptime_s: u64,
    last_seen: String,
    ips: Vec<IpAddr>,
    console: Option<String>,
    drift: bool,
    me: bool,
}

pub async fn render(state: web::Data<ConsoleState>) -> Markup {
    let me = state.settings();
    let peers = state.registry.send(ListPeers).await.unwrap_or_default();
    let now = now_ms();
    let mut rows = vec![Row {
        name: me.name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: now.saturating_sub(state.started_at) / 1000,
        last_seen: "this instance".into(),
        ips: me.local_ips.clone(),
        console: me.console_url.clone(),
        drift: false,
        me: true,
    }];
    rows.extend(peers.iter().map(|p| {
        let a = &p.announcement;
        Row {
            name: a.name.clone(),
            version: a.version.clone(),
            uptime_s: now.saturating_sub(a.started_at) / 1000,
            last_seen: format!("{:.1} s ago", p.last_seen.as_secs_f64()),
            ips: a.local_ips.clone(),
            console: a.console_url.clone(),
            drift: !a.config_hash.is_empty() && a.config_hash != me.config_hash,
            me: false,
        }
    }));
    let mut claims: HashMap<IpAddr, usize> = HashMap::new();
    for row in &rows {
        for ip in &row.ips {
            *claims.entry(*ip).or_default() += 1;
        }
    }
    let s = state.stats.snapshot();
    let depths = state.queue_depths().await;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content="5";
                title { "mailroute: " (me.name) }
                style { (STYLE) }
            }
            body {
                h1 { "mailroute cluster, seen from " (me.name) }
                p { (rows.len()) " instances. This page refreshes every 5 s." }
                div.wrap { table {
                    tr { th { "instance" } th { "version" } th { "uptime" } th { "last seen" }
                         th { "state" } th { "IPs" } }
                    @for row in &rows {
                        tr class=[row.me.then_some("me")] {
                            td {
                                @match &row.console {
                                    Some(url) => a href=(url) { (row.name) },
                                    None => (row.name),
                                }
                                @if row.drift { " " span.drift title="its cluster settings differ from this instance's" { "settings differ" } }
                            }
                            td { (row.version) }
                            td { (row.uptime_s) " s" }
                            td { (row.last_seen) }
                            td { "alive" }
                            td {
                                @for (i, ip) in row.ips.iter().enumerate() {
                                    @if i > 0 { ", " }
                                    @if claims.get(ip).copied().unwrap_or(0) > 1 {
                                        span.conflict title="claimed by more than one instance" { (ip) }
                                    } @else { code { (ip) } }
                                }
                            }
                        }
                    }
                } }
                h2 { "This instance" }
                div.wrap { table {
                    tr { th { "delivered" } th { "handed over" } th { "relayed in" } th { "held" }
                         th { "failed" } th { "duplicates dropped" } th { "publish errors" } }
                    tr { td { (s.delivered) } td { (s.handed_over) } td { (s.relayed) }
                         td { (s.held) } td { (s.failed) } td { (s.duplicates_dropped) }
                         td { (s.publish_errors) } }
                } }
                h2 { "Queues" }
                div.wrap { table {
                    tr { th { "queue" } th { "ready messages" } }
                    @for (queue, depth) in &depths {
                        tr { td { code { (queue) } } td {
                            @match depth { Some(n) => (n), None => "unreachable" }
                        } }
                    }
                } }
                p { "API: " a href="/api/v1/cluster" { "/api/v1/cluster" } ", "
                    a href="/api/v1/stats" { "/api/v1/stats" } ", "
                    a href="/metrics" { "/metrics" } }
            }
        }
    }
}

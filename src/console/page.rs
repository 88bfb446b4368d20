//! `/`: the cluster page, server-rendered (maud), refreshing itself every few seconds. This
//! instance first, then every peer (those that left or expired lately too) with its state, a
//! link to its own console and its counters as its console reports them; IPs two instances
//! claim are shown in red, and a peer with other cluster settings is flagged. The operator
//! actions are buttons that send the token typed into the page (kept in the browser's session
//! storage, never sent by the server).

use std::collections::HashMap;
use std::net::IpAddr;

use actix_web::{HttpRequest, HttpResponse};
use mailroute_actors::cluster::wire::now_ms;
use mailroute_actors::messages::{ListMembers, PeerState};
use mailroute_actors::stats::StatsSnapshot;
use maud::{DOCTYPE, Markup, html};

use super::{ConsoleState, links};

/// Served as `/console.css`: the page's policy allows no inline style or script.
pub const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1rem;color:#222}\
table{border-collapse:collapse;width:100%;font-size:.9rem}\
th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}\
th{background:#f4f4f4}.conflict{color:#b00;font-weight:bold}.drift{color:#b60}\
.me{background:#f0f7ff}.wrap{overflow-x:auto}code{font-size:.85rem}\
.state-draining,.state-leaving{color:#b60;font-weight:bold}.state-left,.state-expired{color:#888}\
.gone{color:#888}.actions{margin:1rem 0;display:flex;flex-wrap:wrap;gap:.5rem;align-items:center}\
button{padding:.4rem .9rem}input[type=password]{padding:.3rem}";

/// Served as `/console.js`. Refreshes the page unless the operator is typing the token;
/// stores the token for this browser session only; sends the actions with it and shows the
/// answer.
pub const SCRIPT: &str = r#"
const token = document.getElementById('token');
if (token) {
  token.value = sessionStorage.getItem('mailroute-token') || '';
  token.addEventListener('input', () => sessionStorage.setItem('mailroute-token', token.value));
  for (const button of document.querySelectorAll('button[data-action]')) {
    button.addEventListener('click', async () => {
      const out = document.getElementById('result');
      const cluster = document.getElementById('cluster').checked;
      try {
        const r = await fetch('/api/v1/' + button.dataset.action, {
          method: 'POST',
          headers: {'Authorization': 'Bearer ' + token.value, 'Content-Type': 'application/json'},
          body: JSON.stringify({cluster})
        });
        const body = await r.json();
        out.textContent = r.ok ? (button.dataset.action + ': accepted') : ('refused: ' + body.error);
        if (r.ok) setTimeout(() => location.reload(), 700);
      } catch (e) { out.textContent = 'failed: ' + e; }
    });
  }
}
setInterval(() => { if (document.activeElement !== token) location.reload(); }, 5000);
"#;

struct Row {
    name: String,
    version: String,
    uptime_s: u64,
    last_seen: String,
    state: PeerState,
    ips: Vec<IpAddr>,
    console: Option<String>,
    /// `console` if it is a web address (see `links`): a link, and fetched.
    link: Option<url::Url>,
    drift: bool,
    me: bool,
}

fn live(state: PeerState) -> bool {
    !matches!(state, PeerState::Left | PeerState::Expired)
}

pub async fn render(state: actix_web::web::Data<ConsoleState>, req: HttpRequest) -> HttpResponse {
    if let Some(refused) = state.refuse_read(&req) {
        return refused;
    }
    let markup = draw(&state).await;
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

async fn draw(state: &ConsoleState) -> Markup {
    let me = state.settings();
    let tokens = state.tokens();
    // Announced URLs are fetched only when announcements are verified (see `peers`).
    let fetch_counters = me.codec.is_signed();
    let members = state.registry.send(ListMembers).await.unwrap_or_default();
    let now = now_ms();
    let mine = state.stats.snapshot();
    let mut rows = vec![Row {
        name: me.name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: now.saturating_sub(state.started_at) / 1000,
        last_seen: "this instance".into(),
        state: if mine.paused {
            PeerState::Draining
        } else {
            PeerState::Alive
        },
        ips: me.local_ips.clone(),
        console: me.console_url.clone(),
        link: me.console_url.as_deref().and_then(links::web_url),
        drift: false,
        me: true,
    }];
    rows.extend(members.iter().map(|p| {
        let a = &p.announcement;
        let seen = p.last_seen.as_secs_f64();
        Row {
            name: a.name.clone(),
            version: a.version.clone(),
            uptime_s: now.saturating_sub(a.started_at) / 1000,
            last_seen: if live(p.state) {
                format!("{seen:.1} s ago")
            } else {
                format!("gone {seen:.0} s ago")
            },
            state: p.state,
            ips: a.local_ips.clone(),
            console: a.console_url.clone(),
            link: a.console_url.as_deref().and_then(links::web_url),
            drift: !a.config_hash.is_empty() && a.config_hash != me.config_hash,
            me: false,
        }
    }));
    let mut claims: HashMap<IpAddr, usize> = HashMap::new();
    for row in rows.iter().filter(|r| live(r.state)) {
        for ip in &row.ips {
            *claims.entry(*ip).or_default() += 1;
        }
    }
    let consoles: Vec<url::Url> = rows
        .iter()
        .filter(|r| fetch_counters && !r.me && live(r.state))
        .filter_map(|r| r.link.clone())
        .collect();
    let counters = state
        .peer_counters
        .stats(consoles, tokens.read.clone())
        .await;
    let counters_of = |row: &Row| -> Option<Option<StatsSnapshot>> {
        if row.me {
            return Some(Some(mine));
        }
        if !live(row.state) || !fetch_counters {
            return None;
        }
        Some(
            row.link
                .as_ref()
                .and_then(|c| counters.get(c.as_str()).copied().flatten()),
        )
    };
    let depths = state.queue_depths().await;
    let actions_on = tokens.action.is_some();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                noscript { meta http-equiv="refresh" content="5"; }
                title { "mailroute: " (me.name) }
                link rel="stylesheet" href="/console.css";
            }
            body {
                h1 { "mailroute cluster, seen from " (me.name) }
                p { (rows.iter().filter(|r| live(r.state)).count()) " live instances. This page refreshes every 5 s." }
                div.wrap { table #instances {
                    tr { th { "instance" } th { "state" } th { "version" } th { "uptime" }
                         th { "last seen" } th { "IPs" } th { "delivered" } th { "handed over" }
                         th { "taken over" } th { "held" } th { "failed" } th { "duplicates" } }
                    @for row in &rows {
                        tr class=[row.me.then_some("me").or((!live(row.state)).then_some("gone"))] data-instance=(row.name) {
                            td {
                                @match (&row.link, row.console.as_deref()) {
                                    (Some(url), _) if live(row.state) => a href=(url) rel="noreferrer" { (row.name) },
                                    (None, Some(text)) => {
                                        (row.name) " " span.drift title="only http(s) URLs are links" { "console URL not a web address: " code { (text) } }
                                    }
                                    _ => (row.name),
                                }
                                @if row.drift { " " span.drift title="its cluster settings differ from this instance's" { "settings differ" } }
                            }
                            td.state { span class={ "state-" (row.state.as_str()) } { (row.state.as_str()) } }
                            td { (row.version) }
                            td { (row.uptime_s) " s" }
                            td { (row.last_seen) }
                            td {
                                @for (i, ip) in row.ips.iter().enumerate() {
                                    @if i > 0 { ", " }
                                    @if live(row.state) && claims.get(ip).copied().unwrap_or(0) > 1 {
                                        span.conflict title="claimed by more than one instance" { (ip) }
                                    } @else { code { (ip) } }
                                }
                            }
                            @match counters_of(row) {
                                Some(Some(s)) => {
                                    td { (s.delivered) } td { (s.handed_over) } td { (s.relayed) }
                                    td { (s.held) } td { (s.failed) } td { (s.duplicates_dropped) }
                                }
                                Some(None) => td colspan="6" .gone { "console unreachable" },
                                None => td colspan="6" {},
                            }
                        }
                    }
                } }
                @if !fetch_counters {
                    p.gone #no-peer-counters { "Peers' counters are shown once cluster-secret is set: without it, anyone who can publish to the cluster exchange can announce a console URL, and this page does not fetch unverified ones." }
                }
                p.gone { "Handed over: sent to the IP's owner. Taken over: handed over to this instance through the cluster broker's handover queue (private brokers)." }
                h2 { "Actions" }
                @if actions_on {
                    div.actions {
                        label { "Token " input #token type="password" autocomplete="off"; }
                        label { input #cluster type="checkbox"; " whole cluster" }
                        button data-action="drain" title="Stop taking outbox mail; stay in the cluster" { "Drain" }
                        button data-action="resume" { "Resume" }
                        button data-action="reload" title="Re-read the config file" { "Reload" }
                        span #result {}
                    }
                } @else {
                    p { "Operator actions are off: set " code { "www-token" } " in the config to enable them." }
                }
                h2 { "Queues of " (me.name) }
                div.wrap { table {
                    tr { th { "queue" } th { "ready messages" } }
                    @for (queue, depth) in &depths {
                        tr { td { code { (queue) } } td {
                            @match depth { Some(n) => (n), None => "unreachable" }
                        } }
                    }
                } }
                p { "API: " a href="/api/v1/instance" { "/api/v1/instance" } ", "
                    a href="/api/v1/cluster" { "/api/v1/cluster" } ", "
                    a href="/api/v1/stats" { "/api/v1/stats" } ", "
                    a href="/metrics" { "/metrics" } }
                script src="/console.js" {}
            }
        }
    }
}

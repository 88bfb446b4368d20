//! The console, served by `serve` on `www-address` (actix-web): the cluster page, health
//! probes, a versioned JSON API, Prometheus metrics, and the operator actions (drain, resume,
//! reload) behind `www-token`.

pub mod access;
mod actions;
pub mod links;
mod metrics;
mod page;
mod peers;

use std::sync::{Arc, RwLock};

use actix::Addr;
use actix_web::{App, HttpResponse, HttpServer, dev::ServerHandle, web};
use mailroute_actors::cluster::peer_registry::PeerRegistry;
use mailroute_actors::cluster::wire::now_ms;
use mailroute_actors::messages::{HearingNow, ListMembers};
use mailroute_actors::stats::Stats;
use mailroute_actors::{Controls, Instance, InstanceSettings, SharedBroker};

use access::{Limiter, Tokens};
use actix_web::HttpRequest;
use serde_json::json;

/// What the handlers read; shared by the server's workers.
pub struct ConsoleState {
    /// The settings as they run now (a reload replaces them).
    pub settings: Arc<RwLock<InstanceSettings>>,
    pub started_at: u64,
    pub stats: Arc<Stats>,
    pub registry: Addr<PeerRegistry>,
    /// This instance's broker, for its queue depths.
    pub local: SharedBroker,
    /// `www-token` and `www-read-token` as they run now (a reload may change them).
    pub tokens: RwLock<Tokens>,
    /// Wrong tokens per client address.
    pub limiter: Limiter,
    /// The peers' counters as last fetched, at most once per interval each.
    pub peer_counters: peers::PeerCounters,
    pub controls: Controls,
    /// A local reload (`POST /api/v1/reload` without `cluster`): whoever runs the instance
    /// re-reads its config file, as on SIGHUP.
    pub reload: Arc<tokio::sync::Notify>,
}

impl ConsoleState {
    pub fn of(instance: &Instance, local: SharedBroker, tokens: Tokens) -> ConsoleState {
        ConsoleState {
            settings: Arc::new(RwLock::new(instance.settings.clone())),
            started_at: instance.started_at,
            stats: instance.stats.clone(),
            registry: instance.registry.clone(),
            local,
            tokens: RwLock::new(tokens),
            limiter: Limiter::default(),
            peer_counters: peers::PeerCounters::default(),
            controls: instance.controls(),
            reload: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// After a reload: the settings and tokens that run now.
    pub fn update(&self, settings: &InstanceSettings, tokens: Tokens) {
        *self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = settings.clone();
        *self
            .tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tokens;
    }

    pub fn tokens(&self) -> Tokens {
        self.tokens
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// `None` if `req` may read the page and the API (see `access`).
    fn refuse_read(&self, req: &HttpRequest) -> Option<HttpResponse> {
        access::refuse_read(&self.tokens(), &self.limiter, req)
    }

    fn paused(&self) -> bool {
        self.stats.paused.load(std::sync::atomic::Ordering::Relaxed) == 1
    }

    /// This instance's state as its peers see it.
    fn state(&self) -> &'static str {
        if self.paused() { "draining" } else { "alive" }
    }

    /// Ready messages in the outbox, retry and failure queues (`None`: the broker did not say).
    async fn queue_depths(&self) -> Vec<(String, Option<u32>)> {
        let s = self.settings();
        let mut depths = Vec::new();
        for queue in [s.outbox, s.retry, s.failure] {
            let depth = self.local.queue_len(&queue).await.ok();
            depths.push((queue, depth));
        }
        depths
    }

    fn settings(&self) -> InstanceSettings {
        self.settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Binds `address` and serves until the handle stops it. A wrong address stops startup.
pub fn start(address: &str, state: Arc<ConsoleState>) -> std::io::Result<ServerHandle> {
    let data = web::Data::from(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(security_headers())
            .route("/", web::get().to(page::render))
            .route("/console.js", web::get().to(script))
            .route("/console.css", web::get().to(style))
            .route("/livez", web::get().to(livez))
            .route("/readyz", web::get().to(readyz))
            .route("/api/v1/instance", web::get().to(instance))
            .route("/api/v1/stats", web::get().to(stats))
            .route("/api/v1/cluster", web::get().to(cluster))
            .route("/metrics", web::get().to(metrics::scrape))
            .route("/api/v1/drain", web::post().to(actions::drain))
            .route("/api/v1/resume", web::post().to(actions::resume))
            .route("/api/v1/reload", web::post().to(actions::reload))
    })
    // The console is for people and probes, not load: one worker, off the routing path.
    .workers(1)
    .disable_signals()
    .bind(address)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(handle)
}

/// The page's policy: its script and style come from this origin only (no inline code, so an
/// announced string that slipped into the page could not run), it talks to this origin only,
/// and no other site may frame it or learn its URL.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

fn security_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .add(("X-Frame-Options", "DENY"))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("Referrer-Policy", "no-referrer"))
        .add(("Cache-Control", "no-store"))
}

async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(page::SCRIPT)
}

async fn style() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .body(page::STYLE)
}

async fn livez() -> HttpResponse {
    HttpResponse::Ok().body("ok\n")
}

/// 200 once this instance listens to the cluster and has heard it, and is not paused; 503
/// (with why) otherwise.
async fn readyz(state: web::Data<ConsoleState>) -> HttpResponse {
    if state.paused() {
        return HttpResponse::ServiceUnavailable().body("not ready: drained for maintenance\n");
    }
    match state.registry.send(HearingNow).await {
        Ok(heard) if heard.0 => HttpResponse::Ok().body("ready\n"),
        Ok(_) => HttpResponse::ServiceUnavailable().body("not ready: the cluster is not heard\n"),
        Err(_) => HttpResponse::ServiceUnavailable().body("not ready: peer registry restarting\n"),
    }
}

async fn instance(state: web::Data<ConsoleState>, req: HttpRequest) -> HttpResponse {
    if let Some(refused) = state.refuse_read(&req) {
        return refused;
    }
    let s = state.settings();
    HttpResponse::Ok().json(json!({
        "name": s.name,
        "version": env!("CARGO_PKG_VERSION"),
        "started_at_ms": state.started_at,
        "uptime_s": now_ms().saturating_sub(state.started_at) / 1000,
        "state": state.state(),
        "outbox": s.outbox,
        "local_ips": s.local_ips,
        "console_url": s.console_url,
        "config_hash": s.config_hash,
    }))
}

async fn stats(state: web::Data<ConsoleState>, req: HttpRequest) -> HttpResponse {
    if let Some(refused) = state.refuse_read(&req) {
        return refused;
    }
    HttpResponse::Ok().json(state.stats.snapshot())
}

/// The peers as this instance's registry sees them, those that left or expired lately too.
async fn cluster(state: web::Data<ConsoleState>, req: HttpRequest) -> HttpResponse {
    if let Some(refused) = state.refuse_read(&req) {
        return refused;
    }
    let peers = state.registry.send(ListMembers).await.unwrap_or_default();
    let me = state.settings();
    let peers: Vec<_> = peers
        .iter()
        .map(|p| {
            let a = &p.announcement;
            json!({
                "name": a.name,
                "state": p.state,
                "version": a.version,
                "started_at_ms": a.started_at,
                "local_ips": a.local_ips,
                "outbox": a.outbox,
                "broker": a.broker,
                "console_url": a.console_url,
                "config_hash": a.config_hash,
                "config_drift": !a.config_hash.is_empty() && a.config_hash != me.config_hash,
                "last_seen_ms": p.last_seen.as_millis() as u64,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({ "instance": me.name, "state": state.state(), "peers": peers }))
}

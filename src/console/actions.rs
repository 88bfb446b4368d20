//! Operator actions, each a `POST` that needs `www-token` as a bearer token:
//! `/api/v1/drain`, `/api/v1/resume`, `/api/v1/reload`, with an optional JSON body
//! `{"cluster": true}` to act on every instance (as MailerQ's REST pauses take it).
//! Without a token configured the actions are off (403, saying so); a missing or wrong token
//! gets 401 and changes nothing, and a burst of them 429 (see `access`).

use actix_web::{HttpRequest, HttpResponse, web};
use mailroute_actors::cluster::wire::ClusterMessage;
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, info};

use super::ConsoleState;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scope {
    #[serde(default)]
    cluster: bool,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Drain,
    Resume,
    Reload,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Drain => "drain",
            Action::Resume => "resume",
            Action::Reload => "reload",
        }
    }
}

pub async fn drain(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    act(Action::Drain, &state, &req, &body).await
}

pub async fn resume(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    act(Action::Resume, &state, &req, &body).await
}

pub async fn reload(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    act(Action::Reload, &state, &req, &body).await
}

fn error(response: &mut actix_web::HttpResponseBuilder, message: &str) -> HttpResponse {
    response.json(json!({ "error": message }))
}

async fn act(action: Action, state: &ConsoleState, req: &HttpRequest, body: &[u8]) -> HttpResponse {
    let peer = req
        .peer_addr()
        .map_or_else(|| "-".to_string(), |a| a.to_string());
    if let Some(refused) = super::access::refuse_action(&state.tokens(), &state.limiter, req) {
        debug!(action = action.name(), %peer, status = refused.status().as_u16(), "console action refused");
        return refused;
    }
    let scope: Scope = if body.iter().all(u8::is_ascii_whitespace) {
        Scope::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(scope) => scope,
            Err(e) => {
                return error(
                    &mut HttpResponse::BadRequest(),
                    &format!("body: expected {{\"cluster\": true|false}}: {e}"),
                );
            }
        }
    };
    let me = state.settings().name;
    info!(action = action.name(), cluster = scope.cluster, %peer, "console action");
    if scope.cluster {
        let from = Some(me.clone());
        let message = match action {
            Action::Drain => ClusterMessage::Drain { from },
            Action::Resume => ClusterMessage::Resume { from },
            Action::Reload => ClusterMessage::Reload { from },
        };
        if let Err(e) = state.controls.broadcast(message).await {
            return error(
                &mut HttpResponse::ServiceUnavailable(),
                &format!("the cluster broker did not take the command: {e}"),
            );
        }
    }
    // Applied here at once too (this instance also hears its own broadcast; both are
    // idempotent), so the answer and the page already show it. A cluster reload comes back
    // through the registry, which re-reads the file here as on every instance.
    match action {
        Action::Drain => state.controls.pause(true),
        Action::Resume => state.controls.pause(false),
        Action::Reload if !scope.cluster => state.reload.notify_one(),
        Action::Reload => {}
    }
    HttpResponse::Accepted().json(json!({
        "action": action.name(),
        "cluster": scope.cluster,
        "instance": me,
    }))
}

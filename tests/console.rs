//! The console's API, probes and metrics on `www-address`, from three `serve` processes on the
//! real RabbitMQ: each lists the other two, the counters match the messages sent, and
//! `/metrics` parses as Prometheus text with a real parser.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::scenario::{Cluster, NAMES, ips};
use common::{Expect, publish_all};
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_message};

/// One HTTP/1.0 GET: the status code and the body.
fn get(port: u16, path: &str) -> (u16, String) {
    request(port, "GET", path, None, "")
}

/// One HTTP/1.0 request, with a bearer token if given: the status code and the body.
fn request(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let answer = common::http::call(port, method, path, auth.as_deref(), body);
    (answer.status, answer.body)
}

async fn get_async(port: u16, path: &str) -> (u16, String) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || get(port, &path))
        .await
        .expect("request ran")
}

async fn post(port: u16, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let (path, token, body) = (
        path.to_string(),
        token.map(str::to_string),
        body.to_string(),
    );
    tokio::task::spawn_blocking(move || request(port, "POST", &path, token.as_deref(), &body))
        .await
        .expect("request ran")
}

async fn json(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = get_async(port, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

#[actix::test]
async fn every_console_lists_the_cluster_and_counts_what_was_sent() {
    let ports: Vec<u16> = NAMES.iter().map(|_| common::free_port()).collect();
    let mut cluster = Cluster::start_with_consoles("console", &ports, None, "").await;
    for (i, port) in ports.iter().enumerate() {
        let (status, _) = get_async(*port, "/livez").await;
        assert_eq!(status, 200);
        let ready = wait_for("ready", Duration::from_secs(30), || async {
            get_async(*port, "/readyz").await.0 == 200
        })
        .await;
        assert!(ready.is_ok(), "{}", cluster.logs());
        let me = json(*port, "/api/v1/instance").await;
        assert_eq!(me["name"], NAMES[i]);
        assert_eq!(
            me["console_url"],
            format!("http://127.0.0.1:{port}/"),
            "the default www-url"
        );
        let c = json(*port, "/api/v1/cluster").await;
        let mut peers: Vec<String> = c["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .map(|p| p["name"].as_str().unwrap_or("").to_string())
            .collect();
        peers.sort();
        let others: Vec<String> = NAMES
            .iter()
            .filter(|n| **n != NAMES[i])
            .map(ToString::to_string)
            .collect();
        assert_eq!(peers, others);
    }

    // 150 messages into a's outbox for b's IP: a hands over 150, b delivers 150.
    let mut expected = HashMap::new();
    let mut messages = Vec::new();
    for i in 0..150 {
        let id = format!("console-{i}");
        expected.insert(id.clone(), Expect::Delivered("b".into()));
        let body = mailerq_json(&id, Some(&[ips(1)[0]]), 512);
        messages.push(("a.outbox".to_string(), test_message(&id, body)));
    }
    publish_all(&cluster.client, &messages).await;
    common::wait_all_settled(&cluster.client, &NAMES, &expected, Duration::from_secs(60)).await;
    let (a, b) = (ports[0], ports[1]);
    let counted = wait_for("counters", Duration::from_secs(10), || async {
        json(a, "/api/v1/stats").await["handed_over"] == 150
            && json(b, "/api/v1/stats").await["delivered"] == 150
    })
    .await;
    assert!(counted.is_ok(), "{}", json(a, "/api/v1/stats").await);

    let (status, text) = get_async(b, "/metrics").await;
    assert_eq!(status, 200);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let value = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                // OpenMetrics names a counter's sample `<name>_total`; the parser then does not
                // match it with its TYPE line and reads it untyped.
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(
        value("mailroute_messages_total", Some(("outcome", "delivered"))),
        Some(150.0),
        "{text}"
    );
    assert_eq!(value("mailroute_peers", None), Some(2.0), "{text}");
    // a handed the 150 over: its handover histogram counted each, in its +Inf bucket too.
    let (_, a_metrics) = get_async(a, "/metrics").await;
    let a_scrape = prometheus_parse::Scrape::parse(a_metrics.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text");
    let counted: Vec<f64> = a_scrape
        .samples
        .iter()
        .filter(|s| s.metric == "mailroute_handover_seconds")
        .filter_map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map(|b| b.count),
            _ => None,
        })
        .collect();
    assert_eq!(counted, [150.0], "{a_metrics}");
    assert!(
        value("mailroute_announce_age_seconds", Some(("peer", "a"))).is_some(),
        "{text}"
    );
    // The page: every instance, links to the others' consoles, this instance's counters.
    let (status, page) = get_async(a, "/").await;
    assert_eq!(status, 200);
    for (i, name) in NAMES.iter().enumerate() {
        let link = format!(
            "<a href=\"http://127.0.0.1:{}/\" rel=\"noreferrer\">{name}</a>",
            ports[i]
        );
        assert!(page.contains(&link), "{link} missing: {page}");
    }
    assert!(
        page.contains("a.outbox") && page.contains("handed over"),
        "{page}"
    );
    // No cluster-secret: announced console URLs are not fetched, and the page says why.
    assert!(page.contains("id=\"no-peer-counters\""), "{page}");
    // No www-token: the actions are off, and say so.
    assert!(page.contains("Operator actions are off"), "{page}");
    let (status, body) = post(a, "/api/v1/drain", Some("anything-anything-1"), "").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("set www-token"), "{body}");
    // Follow the link to b: b's own page.
    let (status, b_page) = get_async(b, "/").await;
    assert_eq!(status, 200);
    assert!(
        b_page.contains("mailroute cluster, seen from b"),
        "{b_page}"
    );
    let acc = cluster.account(&expected).await;
    acc.assert_complete(&cluster.logs());
}

const TOKEN: &str = "console-test-token-7f3a9c2e51";

/// Waits until every console says every instance (itself included) is in `state`.
async fn wait_states(ports: &[u16], state: &str) {
    for port in ports {
        let agreed = wait_for(state, Duration::from_secs(30), || async {
            let c = json(*port, "/api/v1/cluster").await;
            c["state"] == state
                && c["peers"]
                    .as_array()
                    .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["state"] == state))
        })
        .await;
        assert!(agreed.is_ok(), "{}", json(*port, "/api/v1/cluster").await);
    }
}

/// Drain on b for the whole cluster: all three stop taking mail (their outboxes keep all that
/// arrives), resume on c takes it all, each message delivered once at its IP's owner. Every
/// action without the token or with a wrong one gets 401 and changes nothing; the token shows
/// in no page, API answer, log line or cluster message.
#[actix::test]
async fn drain_and_resume_the_whole_cluster_from_one_console() {
    let ports: Vec<u16> = NAMES.iter().map(|_| common::free_port()).collect();
    let mut cluster = Cluster::start_with_consoles("console-drain", &ports, Some(TOKEN), "").await;
    // A tap on the cluster exchange: every cluster message, to look for the token in.
    let tap = format!("{}.tap", cluster.vhost.name);
    let spec = mailroute_actors::broker::QueueSpec::private(&tap);
    cluster.client.declare_queue(&spec).await.expect("tap");
    cluster
        .client
        .bind_queue(&tap, "cluster", "#")
        .await
        .expect("tap bound");
    let (a, b, c) = (ports[0], ports[1], ports[2]);

    for path in ["/api/v1/drain", "/api/v1/resume", "/api/v1/reload"] {
        for token in [None, Some("console-test-token-7f3a9c2e52"), Some("")] {
            let (status, body) = post(b, path, token, r#"{"cluster": true}"#).await;
            assert_eq!(status, 401, "{path} with {token:?}: {body}");
        }
    }
    assert_eq!(json(b, "/api/v1/instance").await["state"], "alive");
    let (status, body) = post(b, "/api/v1/drain", Some(TOKEN), "{\"cluster\": 1}").await;
    assert_eq!(status, 400, "a body that is not {{cluster: bool}}: {body}");

    let (status, body) = post(b, "/api/v1/drain", Some(TOKEN), r#"{"cluster": true}"#).await;
    assert_eq!(status, 202, "{body}");
    wait_states(&ports, "draining").await;
    for port in &ports {
        assert_eq!(
            get_async(*port, "/readyz").await.0,
            503,
            "drained is not ready"
        );
    }

    // 300 messages into each outbox, for all three owners: nobody takes any.
    let mut expected = HashMap::new();
    let mut messages = Vec::new();
    for (n, name) in NAMES.iter().enumerate() {
        for i in 0..300 {
            let id = format!("drain-{name}-{i}");
            let owner = (n + i) % 3;
            expected.insert(id.clone(), Expect::Delivered(NAMES[owner].into()));
            let body = mailerq_json(&id, Some(&[ips(owner as u8)[0]]), 512);
            messages.push((format!("{name}.outbox"), test_message(&id, body)));
        }
    }
    publish_all(&cluster.client, &messages).await;
    for name in NAMES {
        assert_eq!(
            common::ready(&cluster.client, &format!("{name}.outbox")).await,
            300,
            "{name}'s outbox was consumed while drained"
        );
    }
    for port in &ports {
        assert_eq!(json(*port, "/api/v1/stats").await["consumed"], 0);
    }

    let (status, body) = post(c, "/api/v1/resume", Some(TOKEN), r#"{"cluster": true}"#).await;
    assert_eq!(status, 202, "{body}");
    wait_states(&ports, "alive").await;
    common::wait_all_settled(&cluster.client, &NAMES, &expected, Duration::from_secs(60)).await;

    // A local reload from a's console: a re-reads its file, as on SIGHUP.
    let (status, body) = post(a, "/api/v1/reload", Some(TOKEN), "").await;
    assert_eq!(status, 202, "{body}");
    let reloaded = wait_for("a reloaded", Duration::from_secs(10), || async {
        cluster
            .logs()
            .contains("console reload: re-reading the config")
    })
    .await;
    assert!(reloaded.is_ok(), "{}", cluster.logs());

    let mut seen = String::new();
    for port in &ports {
        for path in [
            "/",
            "/api/v1/instance",
            "/api/v1/cluster",
            "/api/v1/stats",
            "/metrics",
        ] {
            seen.push_str(&get_async(*port, path).await.1);
        }
    }
    let heard = common::drain(&cluster.client, &tap).await;
    assert!(heard.len() > 6, "the tap heard the cluster");
    let acc = cluster.account(&expected).await;
    acc.assert_complete(&cluster.logs());
    let logs = cluster.logs();
    assert!(
        logs.contains("console token refused"),
        "refusals are logged"
    );
    assert!(!seen.contains(TOKEN), "the token in a page or API answer");
    assert!(!logs.contains(TOKEN), "the token in a log");
    let token = TOKEN.as_bytes();
    assert!(
        !heard
            .iter()
            .any(|m| m.body.windows(token.len()).any(|w| w == token)),
        "the token in a cluster message"
    );
}

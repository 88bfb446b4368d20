//! The console against what a hostile peer or client can send, on three `serve` processes
//! (real RabbitMQ) with `cluster-secret`, `www-token` and `www-read-token` set:
//! - a peer (it knows the secret: a compromised instance) announcing a console URL that points
//!   at a listener this test owns: twenty loads of a's page make at most two requests to it,
//!   and the redirect it answers with is not followed;
//! - a peer announcing a `javascript:` console URL: shown as text, never as a link;
//! - without the read token the page and the API answer 401, probes and `/metrics` 200;
//! - every response carries the security headers;
//! - a burst of wrong tokens is answered 429 after ten, and logged in at most two lines.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::http::{Answer, call};
use common::scenario::{Cluster, announce_forever};
use mailroute_actors::cluster::wire::{Announcement, Codec};
use mailroute_actors::testkit::wait_for;

const TOKEN: &str = "security-test-action-token-4e1f";
const READ_TOKEN: &str = "security-test-read-token-9b2c";
const SECRET: &str = "security-test-cluster-secret-77a0";
const HEADERS: [&str; 4] = [
    "content-security-policy: default-src 'self'",
    "x-frame-options: deny",
    "x-content-type-options: nosniff",
    "referrer-policy: no-referrer",
];

async fn call_async(port: u16, method: &str, path: &str, auth: Option<String>) -> Answer {
    let (method, path) = (method.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || call(port, &method, &path, auth.as_deref(), ""))
        .await
        .expect("request ran")
}

fn bearer(token: &str) -> Option<String> {
    Some(format!("Bearer {token}"))
}

/// What a browser sends for user `operator` and password `token`.
fn basic(token: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("operator:{token}").into_bytes();
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
        out.push_str(&"=".repeat(3 - chunk.len()));
    }
    Some(format!("Basic {out}"))
}

/// A listener that counts the connections it accepts and answers each with `answer`.
fn counting_listener(answer: String) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = listener.local_addr().expect("bound").port();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            let mut buffer = [0u8; 4096];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (port, count)
}

fn phantom(name: &str, ip: [u8; 4], console_url: &str) -> Announcement {
    Announcement {
        name: name.into(),
        version: "phantom".into(),
        started_at: 7,
        local_ips: vec![ip.into()],
        outbox: format!("{name}.outbox"),
        broker: "elsewhere:5672//".into(),
        console_url: Some(console_url.into()),
        ..Default::default()
    }
}

#[actix::test]
async fn the_console_withstands_hostile_peers_and_clients() {
    let ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let extra = format!("cluster-secret: {SECRET}\nwww-read-token: {READ_TOKEN}\n");
    let mut cluster =
        Cluster::start_with_consoles("console-security", &ports, Some(TOKEN), &extra).await;
    let (a, b) = (ports[0], ports[1]);
    let (elsewhere, followed) = counting_listener("HTTP/1.1 200 OK\r\n\r\n{}".into());
    let (probe, asked) = counting_listener(format!(
        "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{elsewhere}/api/v1/stats\r\n\
         Content-Length: 0\r\n\r\n"
    ));
    let codec = Codec::new(Some(SECRET), Duration::from_secs(30));
    let client = cluster.client.clone();
    let announcers = [
        announce_forever(
            client.clone(),
            phantom(
                "probe",
                [10, 77, 0, 1],
                &format!("http://127.0.0.1:{probe}/"),
            ),
            codec.clone(),
        ),
        announce_forever(
            client,
            phantom("xss", [10, 77, 0, 2], "javascript:document.title='pwned'//"),
            codec,
        ),
    ];
    let known = wait_for("a knows both phantoms", Duration::from_secs(30), || async {
        let answer = call_async(a, "GET", "/api/v1/cluster", bearer(READ_TOKEN)).await;
        answer.body.contains("\"probe\"") && answer.body.contains("\"xss\"")
    })
    .await;
    assert!(known.is_ok(), "{}", cluster.logs());

    // Reading needs a token; probes and metrics do not.
    for path in ["/", "/api/v1/cluster", "/api/v1/stats", "/api/v1/instance"] {
        let answer = call_async(a, "GET", path, None).await;
        assert_eq!(answer.status, 401, "{path}: {}", answer.body);
        assert!(answer.head.contains("www-authenticate: basic"), "{path}");
        for auth in [bearer(READ_TOKEN), basic(READ_TOKEN), bearer(TOKEN)] {
            let answer = call_async(a, "GET", path, auth.clone()).await;
            assert_eq!(answer.status, 200, "{path} with {auth:?}: {}", answer.body);
        }
    }
    for path in ["/livez", "/metrics", "/console.js", "/console.css"] {
        let answer = call_async(a, "GET", path, None).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    }
    // The read token does not act.
    let answer = call_async(a, "POST", "/api/v1/drain", bearer(READ_TOKEN)).await;
    assert_eq!(answer.status, 401, "{}", answer.body);

    // Every response carries the headers: pages, API, probes, refusals, unknown paths.
    for (method, path, auth) in [
        ("GET", "/", bearer(READ_TOKEN)),
        ("GET", "/", None),
        ("GET", "/api/v1/cluster", bearer(READ_TOKEN)),
        ("GET", "/livez", None),
        ("GET", "/readyz", None),
        ("GET", "/metrics", None),
        ("GET", "/console.js", None),
        ("GET", "/no-such-page", None),
        ("POST", "/api/v1/drain", None),
    ] {
        let answer = call_async(a, method, path, auth).await;
        for header in HEADERS {
            assert!(
                answer.head.contains(header),
                "{method} {path}: no {header}: {}",
                answer.head
            );
        }
    }

    // Twenty more loads of the page (five came before): the announced URL is asked at most
    // once per 5 s interval (so once or twice in all here), and its redirect is not followed.
    let started = std::time::Instant::now();
    let mut page = String::new();
    for _ in 0..20 {
        let answer = call_async(a, "GET", "/", bearer(READ_TOKEN)).await;
        assert_eq!(answer.status, 200);
        page = answer.body;
    }
    let requests = asked.load(Ordering::SeqCst);
    println!(
        "25 page loads: {requests} requests to the announced console URL ({:.1?} for the last 20)",
        started.elapsed()
    );
    assert!(
        (1..=2).contains(&requests),
        "{requests} requests to the announced URL"
    );
    assert_eq!(
        followed.load(Ordering::SeqCst),
        0,
        "a redirect was followed"
    );
    // The javascript: URL is text, not a link; b's counters were fetched with the token.
    assert!(!page.contains("href=\"javascript:"), "{page}");
    assert!(page.contains("console URL not a web address"), "{page}");
    assert!(!page.contains("no-peer-counters"), "{page}");

    // A burst of wrong tokens at b: 401 ten times, then 429 even for the right one.
    let mut statuses = Vec::new();
    for i in 0..15 {
        let answer = call_async(b, "GET", "/api/v1/cluster", bearer(&format!("guess-{i}"))).await;
        statuses.push(answer.status);
    }
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    let answer = call_async(b, "GET", "/api/v1/cluster", bearer(READ_TOKEN)).await;
    assert_eq!(
        answer.status, 429,
        "the right token waits out the spell too"
    );
    assert!(answer.head.contains("retry-after:"), "{}", answer.head);
    let b_log = cluster.server("b").log_text();
    let lines = b_log.matches("console token refused").count();
    assert!((1..=2).contains(&lines), "{lines} log lines: {b_log}");
    // a, asked with the right tokens all along, is not affected by b's spell.
    assert_eq!(
        call_async(a, "GET", "/api/v1/stats", bearer(READ_TOKEN))
            .await
            .status,
        200
    );
    for announcer in announcers {
        announcer.abort();
    }
}

//! The console in a real browser: headless Chromium, driven through ChromeDriver (fantoccini),
//! loads a's page on three `serve` processes (real RabbitMQ), finds b and c with working
//! links and follows one, then drains the whole cluster with the page's button and sees every
//! instance's state change, and resumes. A peer announcing a `javascript:` console URL is
//! shown as text and nothing runs. A screenshot goes to `target/console.png`.
//! `scripts/test` installs Debian's `chromium` and `chromium-driver` when missing.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Expect;
use common::scenario::{Cluster, NAMES, announce_forever, ips};
use fantoccini::{Client, ClientBuilder, Locator};
use mailroute_actors::cluster::wire::{Announcement, Codec};
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_message};

const TOKEN: &str = "browser-test-token-5d1e8b7a";
const SECRET: &str = "browser-test-cluster-secret-0c4d";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const LIMIT: Duration = Duration::from_secs(30);

/// ChromeDriver on its own port, killed with the test.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser() -> (Driver, Client) {
    assert!(
        Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
        "this test needs Chromium and ChromeDriver: apt-get install chromium chromium-driver \
         (./scripts/test installs them)"
    );
    let port = common::free_port();
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver(driver);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            // No sandbox: tests run as root in a container, where Chromium's sandbox cannot.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,800"],
        }),
    );
    let listening = wait_for("chromedriver listens", LIMIT, || async {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    listening.expect("chromedriver listens");
    // ring and aws-lc-rs are both in the build (lapin pulls the latter): name one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a browser session");
    (driver, client)
}

/// The text of the first element at `css`, or `None` while there is none (the page reloads).
async fn text(client: &Client, css: &str) -> Option<String> {
    let element = client.find(Locator::Css(css)).await.ok()?;
    element.text().await.ok()
}

async fn wait_text(client: &Client, css: &str, want: &str) {
    let found = wait_for(&format!("{css} = {want}"), LIMIT, || async {
        text(client, css).await.as_deref() == Some(want)
    })
    .await;
    if found.is_err() {
        let source = client.source().await.unwrap_or_default();
        panic!("{css} never read {want}: {source}");
    }
}

/// Clicks the element at `at` (`what` names it in a failure).
async fn click(client: &Client, at: Locator<'_>, what: &str) {
    let element = client
        .find(at)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    element
        .click()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

async fn state_of(client: &Client, name: &str, want: &str) {
    wait_text(
        client,
        &format!("tr[data-instance=\"{name}\"] td.state"),
        want,
    )
    .await;
}

#[actix::test]
async fn a_browser_follows_the_links_and_drains_the_cluster_from_the_page() {
    let ports: Vec<u16> = NAMES.iter().map(|_| common::free_port()).collect();
    // With a secret: the page fetches the peers' counters only from verified announcements.
    let extra = format!("cluster-secret: {SECRET}\n");
    let mut cluster =
        Cluster::start_with_consoles("console-browser", &ports, Some(TOKEN), &extra).await;
    // A peer (one that knows the secret) announcing a script as its console URL.
    let xss = announce_forever(
        cluster.client.clone(),
        Announcement {
            name: "xss".into(),
            version: "phantom".into(),
            started_at: 7,
            local_ips: vec![std::net::IpAddr::from([10, 78, 0, 1])],
            outbox: "xss.outbox".into(),
            broker: "elsewhere:5672//".into(),
            console_url: Some("javascript:document.title='pwned'//".into()),
            ..Default::default()
        },
        Codec::new(Some(SECRET), Duration::from_secs(30)),
    );
    // Some mail first, so the page has counters to show: 120 from a to b, 60 kept by c.
    let mut expected = HashMap::new();
    let mut messages = Vec::new();
    for (i, (outbox, owner)) in std::iter::repeat_n(("a.outbox", 1u8), 120)
        .chain(std::iter::repeat_n(("c.outbox", 2u8), 60))
        .enumerate()
    {
        let id = format!("browser-{i}");
        expected.insert(id.clone(), Expect::Delivered(NAMES[owner as usize].into()));
        let body = mailerq_json(&id, Some(&[ips(owner)[0]]), 512);
        messages.push((outbox.to_string(), test_message(&id, body)));
    }
    common::publish_all(&cluster.client, &messages).await;
    common::wait_all_settled(&cluster.client, &NAMES, &expected, LIMIT).await;

    let (_driver, client) = browser().await;
    let a_url = format!("http://127.0.0.1:{}/", ports[0]);
    client.goto(&a_url).await.expect("a's page loads");
    wait_text(&client, "h1", "mailroute cluster, seen from a").await;
    for (i, name) in NAMES.iter().enumerate().skip(1) {
        let link = client
            .find(Locator::Css(&format!("tr[data-instance=\"{name}\"] a")))
            .await
            .expect("a link to the peer");
        let href = link.attr("href").await.expect("href");
        assert_eq!(
            href.as_deref(),
            Some(format!("http://127.0.0.1:{}/", ports[i]).as_str())
        );
        state_of(&client, name, "alive").await;
    }
    // The script's row: its URL is text, not a link, and clicking it runs nothing.
    state_of(&client, "xss", "alive").await;
    let links = client
        .find_all(Locator::Css("tr[data-instance=\"xss\"] a"))
        .await
        .expect("searched");
    assert!(links.is_empty(), "the javascript: URL is a link");
    let shown = text(&client, "tr[data-instance=\"xss\"] td:first-child").await;
    assert!(
        shown
            .as_deref()
            .is_some_and(|t| t.contains("javascript:document.title")),
        "{shown:?}"
    );
    click(
        &client,
        Locator::Css("tr[data-instance=\"xss\"] td:first-child code"),
        "the URL's text",
    )
    .await;
    let title = client
        .execute("return document.title", Vec::new())
        .await
        .expect("title read");
    assert_eq!(title, serde_json::json!("mailroute: a"), "the script ran");
    // Peers' counters come from their own consoles: b delivered the 120.
    wait_text(&client, "tr[data-instance=\"b\"] td:nth-child(7)", "120").await;
    click(
        &client,
        Locator::Css("tr[data-instance=\"c\"] a"),
        "c's link",
    )
    .await;
    wait_text(&client, "h1", "mailroute cluster, seen from c").await;
    client.goto(&a_url).await.expect("back to a");
    wait_text(&client, "h1", "mailroute cluster, seen from a").await;

    // A wrong token first: refused, nothing changes.
    let token = client
        .find(Locator::Id("token"))
        .await
        .expect("token field");
    token
        .send_keys("not-the-token-at-all")
        .await
        .expect("typed");
    click(
        &client,
        Locator::Css("button[data-action=\"drain\"]"),
        "drain button",
    )
    .await;
    let refused = wait_for("refused", LIMIT, || async {
        text(&client, "#result")
            .await
            .is_some_and(|t| t.starts_with("refused"))
    })
    .await;
    assert!(refused.is_ok(), "{:?}", text(&client, "#result").await);
    state_of(&client, "a", "alive").await;

    token.clear().await.expect("cleared");
    token.send_keys(TOKEN).await.expect("typed");
    click(&client, Locator::Id("cluster"), "cluster box").await;
    click(
        &client,
        Locator::Css("button[data-action=\"drain\"]"),
        "drain button",
    )
    .await;
    for name in NAMES {
        state_of(&client, name, "draining").await;
    }
    let shot = client.screenshot().await.expect("screenshot");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::write(target.join("console.png"), &shot).expect("screenshot saved");

    // The page reloaded: the token comes back from the session, the box does not.
    click(&client, Locator::Id("cluster"), "cluster box").await;
    click(
        &client,
        Locator::Css("button[data-action=\"resume\"]"),
        "resume button",
    )
    .await;
    for name in NAMES {
        state_of(&client, name, "alive").await;
    }
    client.close().await.expect("browser closed");
    xss.abort();
    let acc = cluster.account(&expected).await;
    acc.assert_complete(&cluster.logs());
}

//! A running `serve` re-reads its config file (SIGHUP, `mailroute cluster reload`, MailerQ's
//! `{"reload": true}`): what can change at run time is applied without dropping a message,
//! what needs a restart is reported and left as it is, and a file that no longer parses is
//! rejected whole, the running config staying.

use std::path::Path;

use mailroute::amqp::address::mask_password;
use mailroute::config::{Config, cluster_hash};
use mailroute_actors::Instance;
use tracing::{error, info, warn};

/// One key whose value differs between the running config and the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: &'static str,
    pub old: String,
    pub new: String,
    /// Applied at run time; otherwise it needs a restart.
    pub live: bool,
}

/// Every key as shown in logs (secrets masked), and whether a reload applies it.
fn shown(c: &Config) -> Vec<(&'static str, bool, String)> {
    let ips = |ips: &[std::net::IpAddr]| {
        ips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
    vec![
        ("local-ips", true, ips(&c.local_ips)),
        ("default-ips", true, ips(&c.default_ips)),
        (
            "unroutable",
            true,
            format!("{:?}", c.unroutable).to_lowercase(),
        ),
        ("max-hops", true, c.max_hops.to_string()),
        ("hold-time", true, format!("{:?}", c.hold_time)),
        ("max-hold", true, format!("{:?}", c.max_hold)),
        (
            "announce-interval",
            true,
            format!("{:?}", c.announce_interval),
        ),
        ("peer-timeout", true, format!("{:?}", c.peer_timeout)),
        ("rabbitmq-qos", true, c.rabbitmq_qos.to_string()),
        ("log-level", true, c.log_level.clone()),
        // Read by `cluster list` / `inject` each time they run.
        ("cluster-timeout", true, format!("{:?}", c.cluster_timeout)),
        ("www-token", true, masked(&c.www_token)),
        ("www-read-token", true, masked(&c.www_read_token)),
        (
            "rabbitmq-address",
            false,
            mask_password(&c.rabbitmq_address),
        ),
        ("rabbitmq-outbox", false, c.rabbitmq_outbox.clone()),
        ("rabbitmq-deliver", false, c.rabbitmq_deliver.clone()),
        ("rabbitmq-failure", false, c.rabbitmq_failure.clone()),
        ("rabbitmq-retry", false, c.rabbitmq_retry.clone()),
        (
            "rabbitmq-queue-type",
            false,
            if c.quorum_queues { "quorum" } else { "classic" }.into(),
        ),
        ("cluster-address", false, mask_password(&c.cluster_address)),
        (
            "rabbitmq-heartbeat",
            false,
            c.rabbitmq_heartbeat.to_string(),
        ),
        ("cluster-heartbeat", false, c.cluster_heartbeat.to_string()),
        ("rabbitmq-ca", false, format!("{:?}", c.rabbitmq_ca)),
        ("cluster-ca", false, format!("{:?}", c.cluster_ca)),
        ("rabbitmq-cert", false, format!("{:?}", c.rabbitmq_client)),
        ("cluster-cert", false, format!("{:?}", c.cluster_client)),
        ("cluster-exchange", false, c.cluster_exchange.clone()),
        (
            "cluster-protocol",
            false,
            format!("{:?}", c.protocol).to_lowercase(),
        ),
        ("cluster-secret", false, masked(&c.cluster_secret)),
        (
            "cluster-freshness",
            false,
            format!("{:?}", c.cluster_freshness),
        ),
        ("cluster-name", false, c.cluster_name.clone()),
        ("startup-timeout", false, format!("{:?}", c.startup_timeout)),
        ("warmup", false, format!("{:?}", c.warmup)),
        (
            "log-summary-interval",
            false,
            format!("{:?}", c.log_summary_interval),
        ),
        ("duplicate-memory", false, c.duplicate_memory.to_string()),
        (
            "duplicate-window",
            false,
            format!("{:?}", c.duplicate_window),
        ),
        ("www-address", false, opt(&c.www_address)),
        ("www-url", false, opt(&c.www_url)),
    ]
}

fn masked(secret: &Option<mailroute::config::Secret>) -> String {
    match secret {
        Some(_) => "***".into(),
        None => "(unset)".into(),
    }
}

/// The keys that differ, live ones first. A changed secret shows as `*** → ***`.
pub fn diff(running: &Config, file: &Config) -> Vec<Change> {
    let mut changes: Vec<Change> = shown(running)
        .into_iter()
        .zip(shown(file))
        .filter(|((_, _, old), (_, _, new))| old != new)
        .map(|((key, live, old), (_, _, new))| Change {
            key,
            old,
            new,
            live,
        })
        .collect();
    for (key, live, old, new) in [
        (
            "cluster-secret",
            false,
            &running.cluster_secret,
            &file.cluster_secret,
        ),
        ("www-token", true, &running.www_token, &file.www_token),
        (
            "www-read-token",
            true,
            &running.www_read_token,
            &file.www_read_token,
        ),
    ] {
        if old != new && !changes.iter().any(|c| c.key == key) {
            changes.push(Change {
                key,
                old: "***".into(),
                new: "***".into(),
                live,
            });
        }
    }
    changes
}

/// The running config with the live keys taken from `file`; the rest stays as it runs.
pub fn merge(running: &Config, file: &Config) -> Config {
    let mut next = running.clone();
    next.local_ips = file.local_ips.clone();
    next.default_ips = file.default_ips.clone();
    next.unroutable = file.unroutable;
    next.max_hops = file.max_hops;
    next.hold_time = file.hold_time;
    next.max_hold = file.max_hold;
    next.announce_interval = file.announce_interval;
    next.peer_timeout = file.peer_timeout;
    next.rabbitmq_qos = file.rabbitmq_qos;
    next.log_level = file.log_level.clone();
    next.cluster_timeout = file.cluster_timeout;
    next.www_token = file.www_token.clone();
    next.www_read_token = file.www_read_token.clone();
    next.hash = cluster_hash(&next);
    next
}

/// Re-reads `path` and applies it to `instance`; `running` becomes what now runs.
pub fn run(path: &Path, running: &mut Config, instance: &mut Instance) {
    let file = match super::load_config(path) {
        Ok(file) => file,
        Err(e) => {
            error!(error = %format!("{e:#}"), "config reload rejected; the running config stays");
            return;
        }
    };
    let changes = diff(running, &file);
    if changes.is_empty() {
        info!("config reloaded: nothing changed");
    }
    for c in &changes {
        if c.live {
            info!(key = %c.key, old = %c.old, new = %c.new, "config reloaded: applied");
        } else {
            warn!(key = %c.key, old = %c.old, new = %c.new,
                "config changed, needs restart: the running value stays");
        }
    }
    let next = merge(running, &file);
    if next.log_level != running.log_level && std::env::var_os("RUST_LOG").is_none() {
        super::set_log_level(&next.log_level);
    }
    instance.reconfigure(next.settings().live());
    *running = next;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let raw = mailroute::config::parse_text(text, "test.conf").expect("parses");
        Config::from_raw(raw).expect("valid config")
    }

    #[test]
    fn live_keys_are_applied_and_others_reported_with_secrets_masked() {
        let running = config(
            "rabbitmq-address: amqp://u:hunter2@h/\nlocal-ips: 10.0.0.1\ncluster-secret: s1\n",
        );
        let file = config(
            "rabbitmq-address: amqp://u:other@h2/\nlocal-ips: 10.0.0.1, 10.0.0.2\n\
             cluster-secret: s2\nrabbitmq-qos: 50\nmax-hops: 3\n",
        );
        let changes = diff(&running, &file);
        let keys: Vec<(&str, bool)> = changes.iter().map(|c| (c.key, c.live)).collect();
        assert_eq!(
            keys,
            [
                ("local-ips", true),
                ("max-hops", true),
                ("rabbitmq-qos", true),
                ("rabbitmq-address", false),
                // It defaults to rabbitmq-address.
                ("cluster-address", false),
                ("cluster-secret", false),
            ]
        );
        let text = format!("{changes:?}");
        assert!(!text.contains("hunter2") && !text.contains("other@") && !text.contains("s2"));
        let next = merge(&running, &file);
        assert_eq!(next.local_ips.len(), 2);
        assert_eq!(next.rabbitmq_qos, 50);
        assert_eq!(next.rabbitmq_address, running.rabbitmq_address);
        assert_eq!(next.cluster_secret, running.cluster_secret);
        // max-hops is a cluster setting: the announced hash follows it.
        assert_ne!(next.hash, running.hash);
    }

    #[test]
    fn a_new_console_token_applies_live_and_shows_masked() {
        let running = config("www-token: first-token-0123456789\n");
        let file = config("www-token: second-token-0123456789\n");
        let changes = diff(&running, &file);
        assert_eq!(changes.len(), 1);
        assert_eq!((changes[0].key, changes[0].live), ("www-token", true));
        assert_eq!(
            (changes[0].old.as_str(), changes[0].new.as_str()),
            ("***", "***")
        );
        assert_eq!(merge(&running, &file).www_token, file.www_token);
    }

    /// The live flags of `shown` and what `merge` takes are written apart: every key shown as
    /// live must be taken from the file by `merge`, and every other one must stay as it runs.
    #[test]
    fn merge_takes_exactly_the_keys_shown_as_live() {
        let running = config(
            "rabbitmq-address: amqp://u:p@h1/\nrabbitmq-outbox: o1\nrabbitmq-deliver: d1\n\
             rabbitmq-failure: f1\nrabbitmq-retry: r1\nrabbitmq-qos: 10\n\
             rabbitmq-queue-type: classic\ncluster-address: amqp://u:p@c1/\n\
             cluster-exchange: x1\ncluster-secret: s1\ncluster-freshness: 10s\n\
             cluster-name: n1\nstartup-timeout: 10s\nwarmup: 1s\nlog-summary-interval: 10s\n\
             duplicate-memory: 10\nduplicate-window: 10s\nwww-address: 127.0.0.1:1\n\
             www-url: http://one/\nwww-token: token-one-0123456789\nwww-read-token: read-one-0123456789\n\
             local-ips: 10.0.0.1\ndefault-ips: 10.0.1.1\nunroutable: hold\nmax-hops: 2\nhold-time: 10s\n\
             max-hold: 1h\nannounce-interval: 1s\npeer-timeout: 5s\nlog-level: info\n\
             cluster-timeout: 1s\ncluster-protocol: mesh\nrabbitmq-heartbeat: 5\ncluster-heartbeat: 6\n",
        );
        let file = config(
            "rabbitmq-address: amqp://u:p@h2/\nrabbitmq-outbox: o2\nrabbitmq-deliver: d2\n\
             rabbitmq-failure: f2\nrabbitmq-retry: r2\nrabbitmq-qos: 20\n\
             rabbitmq-queue-type: quorum\ncluster-address: amqp://u:p@c2/\n\
             cluster-exchange: x2\ncluster-secret: s2\ncluster-freshness: 20s\n\
             cluster-name: n2\nstartup-timeout: 20s\nwarmup: 2s\nlog-summary-interval: 20s\n\
             duplicate-memory: 20\nduplicate-window: 20s\nwww-address: 127.0.0.1:2\n\
             www-url: http://two/\nwww-token: token-two-0123456789\nwww-read-token: read-two-0123456789\n\
             local-ips: 10.0.0.2\ndefault-ips: 10.0.1.2\nunroutable: fail\nmax-hops: 3\nhold-time: 20s\n\
             max-hold: 2h\nannounce-interval: 2s\npeer-timeout: 10s\nlog-level: debug\n\
             cluster-timeout: 2s\ncluster-protocol: digest\nrabbitmq-heartbeat: 15\ncluster-heartbeat: 16\n",
        );
        let merged = merge(&running, &file);
        let (before, after, wanted) = (shown(&running), shown(&merged), shown(&file));
        for (((key, live, old), (_, _, now)), (_, _, new)) in before.iter().zip(&after).zip(&wanted)
        {
            // Secrets show as *** either way; certificate files are not made here.
            let unseen = [
                "cluster-secret",
                "www-token",
                "www-read-token",
                "rabbitmq-ca",
                "cluster-ca",
                "rabbitmq-cert",
                "cluster-cert",
            ];
            if !unseen.contains(key) {
                assert_ne!(old, new, "{key}: the two files must differ in it");
            }
            if *live {
                assert_eq!(
                    now, new,
                    "{key} is shown as live but merge keeps the running value"
                );
            } else {
                assert_eq!(
                    now, old,
                    "{key} needs a restart but merge took the file's value"
                );
            }
        }
        // Secrets show as *** either way: compared by value.
        assert_eq!(merged.www_token, file.www_token);
        assert_eq!(merged.www_read_token, file.www_read_token);
        assert_eq!(merged.cluster_secret, running.cluster_secret);
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let running = config("local-ips: 10.0.0.1\n");
        assert!(diff(&running, &config("local-ips: 10.0.0.1\n")).is_empty());
    }
}

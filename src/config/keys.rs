//! The table of keys mailroute knows, and the typo hint for one it does not.

/// RabbitMQ's own default is 60 s, so a link that stops without closing is trusted for two
/// minutes; RabbitMQ recommends 5 to 20 s. 10 s: a silent link is given up after 20 s.
pub const DEFAULT_HEARTBEAT: u16 = 10;

pub(super) const KEYS: &[&str] = &[
    "rabbitmq-address",
    "rabbitmq-outbox",
    "rabbitmq-deliver",
    "rabbitmq-failure",
    "rabbitmq-retry",
    "rabbitmq-qos",
    "cluster-address",
    "rabbitmq-ca",
    "cluster-ca",
    "rabbitmq-cert",
    "rabbitmq-key",
    "cluster-cert",
    "cluster-key",
    "rabbitmq-verify",
    "cluster-verify",
    "cluster-exchange",
    "cluster-secret",
    "cluster-timeout",
    "startup-timeout",
    "rabbitmq-heartbeat",
    "cluster-heartbeat",
    "cluster-freshness",
    "cluster-name",
    "announce-interval",
    "peer-timeout",
    "local-ips",
    "default-ips",
    "max-hops",
    "unroutable",
    "hold-time",
    "max-hold",
    "warmup",
    "log-summary-interval",
    "log-level",
    "rabbitmq-queue-type",
    "cluster-protocol",
    "duplicate-memory",
    "duplicate-window",
    "www-address",
    "www-url",
    "www-token",
    "www-read-token",
];

/// A known key within two edits of `key` (a typo), for the unknown-key warning.
pub fn did_you_mean(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|known| (edit_distance(key, known), *known))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, known)| known)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let replace = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = replace.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

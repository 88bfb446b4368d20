use super::keys::KEYS;
use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    let mut raw = parse_text(text, "test.conf")?;
    apply_env(&mut raw, Vec::new());
    Config::from_raw(raw)
}

#[test]
fn defaults_and_values() {
    let c = load(
        "# a MailerQ-style file\nrabbitmq-address: amqp://u:p@broker:5673/vh\nrabbitmq-outbox: outbox-a\n\
         local-ips: 10.0.0.1, 2001:db8::1\nannounce-interval: 500ms\nunroutable: fail\nmax-hops: 3\n\
         license-key: xyz  # MailerQ's own key\n",
    )
    .unwrap();
    assert_eq!(c.rabbitmq_outbox, "outbox-a");
    assert_eq!(c.cluster_address, c.rabbitmq_address);
    assert_eq!(c.cluster_exchange, "cluster");
    assert_eq!(c.rabbitmq_qos, 1000);
    assert_eq!(c.local_ips.len(), 2);
    assert_eq!(c.peer_timeout, Duration::from_millis(1500));
    assert_eq!(c.unroutable, Unroutable::Fail);
    assert_eq!(c.max_hops, 3);
    assert_eq!(c.unknown_keys.len(), 1);
    assert_eq!(c.unknown_keys[0].0, "license-key");
    let s = c.settings();
    assert_eq!(s.outbox, "outbox-a");
    assert_eq!(s.policy.max_hops, 3);
}

#[test]
fn env_overrides_the_file() {
    let mut raw = parse_text("rabbitmq-qos: 10\n", "f").unwrap();
    apply_env(
        &mut raw,
        vec![
            ("MAILROUTE_RABBITMQ_QOS".into(), "20".into()),
            ("OTHER".into(), "1".into()),
        ],
    );
    assert_eq!(Config::from_raw(raw).unwrap().rabbitmq_qos, 20);
}

fn error_of(text: &str) -> String {
    load(text).unwrap_err().to_string()
}

#[test]
fn bad_values_name_the_key_and_line() {
    let cases = [
        (
            "x: 1\nrabbitmq-qos: lots\n",
            "test.conf line 2: invalid value for `rabbitmq-qos`",
        ),
        (
            "rabbitmq-qos: 0\n",
            "`rabbitmq-qos`: expected a whole number from 1 to 65535",
        ),
        (
            "unroutable: maybe\n",
            "`unroutable`: expected hold, fail or local",
        ),
        (
            "local-ips: 10.0.0.1, 10.0.0.300\n",
            "`local-ips`: \"10.0.0.300\" is not an IP address",
        ),
        (
            "announce-interval: soon\n",
            "`announce-interval`: expected a duration",
        ),
        (
            "announce-interval: 5\npeer-timeout: 5\n",
            "line 2: invalid value for `peer-timeout`",
        ),
        ("rabbitmq-address: http://x\n", "`rabbitmq-address`"),
        (
            "rabbitmq-deliver: outbox\n",
            "`rabbitmq-deliver`: must differ from rabbitmq-outbox",
        ),
        (
            "rabbitmq-outbox: two words\n",
            "`rabbitmq-outbox`: expected a non-empty name",
        ),
        ("\n\njust text\n", "test.conf line 3: expected `key: value`"),
        (
            "rabbitmq-verify: false\n",
            "`rabbitmq-verify`: turning certificate verification off is not supported",
        ),
        (
            "rabbitmq-ca: /nonexistent/ca.pem\n",
            "`rabbitmq-ca`: cannot read /nonexistent/ca.pem",
        ),
        (
            "rabbitmq-queue-type: mirrored\n",
            "`rabbitmq-queue-type`: expected classic or quorum",
        ),
        (
            "cluster-protocol: gossip\n",
            "`cluster-protocol`: expected mesh or digest",
        ),
        (
            "rabbitmq-address: amqp://u:secret@h1/, amqp://u:secret@h2:x/\n",
            "`rabbitmq-address`: amqp://u:***@h2:x/",
        ),
    ];
    for (text, want) in cases {
        let got = error_of(text);
        assert!(got.contains(want), "{text:?}: got {got:?}, want {want:?}");
    }
}

#[test]
fn env_errors_name_the_variable() {
    let mut raw = Raw::new();
    apply_env(&mut raw, vec![("MAILROUTE_MAX_HOPS".into(), "-1".into())]);
    let err = Config::from_raw(raw).unwrap_err().to_string();
    assert!(
        err.starts_with("environment variable MAILROUTE_MAX_HOPS: invalid value for `max-hops`"),
        "{err}"
    );
}

#[test]
fn the_secret_signs_and_never_prints() {
    let c = load("cluster-secret: hunter2\nrabbitmq-address: amqp://u:pw@h/\n").unwrap();
    assert!(c.codec().is_signed());
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!load("").unwrap().codec().is_signed());
}

#[test]
fn a_client_certificate_needs_its_key_and_the_key_never_prints() {
    let dir = std::env::temp_dir().join(format!("mailroute-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("c.pem");
    let key = dir.join("c.key");
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nsecretkeybytes\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let c = load(&format!("rabbitmq-cert: {cert}\nrabbitmq-key: {key}\n")).unwrap();
    let client = c.rabbitmq_client.clone().unwrap();
    assert!(client.key_pem().contains("secretkeybytes"));
    assert_eq!(
        c.cluster_client, c.rabbitmq_client,
        "the cluster broker is the same one"
    );
    assert!(!format!("{c:?}").contains("secretkeybytes"));
    let e = load(&format!("rabbitmq-cert: {cert}\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("rabbitmq-key"), "{e}");
    let e = load(&format!("cluster-key: {key}\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cluster-cert"), "{e}");
    let e = load(&format!("rabbitmq-cert: {cert}\nrabbitmq-key: {cert}\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rabbitmq-key") && e.contains("no PEM private key"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_console_token_must_be_long_and_never_prints() {
    let c = load("www-token: correct-horse-battery-staple\n").unwrap();
    assert_eq!(
        c.www_token.as_ref().map(Secret::expose),
        Some("correct-horse-battery-staple")
    );
    assert!(!format!("{c:?}").contains("correct-horse"));
    for bad in ["www-token: short-one\n", "www-token: sixteen chars here\n"] {
        let e = load(bad).unwrap_err().to_string();
        assert!(e.contains("www-token"), "{e}");
        assert!(!e.contains("short-one") && !e.contains("chars here"), "{e}");
    }
    assert_eq!(load("").unwrap().www_token, None);
    for bad in [
        "www-url: javascript:document.title='pwned'//\n",
        "www-url: /relative\n",
        "www-url: http://user:pw@host/\n",
    ] {
        let e = load(bad).unwrap_err().to_string();
        assert!(e.contains("www-url"), "{e}");
    }
    assert!(load("www-url: https://console.example.net/\n").is_ok());
    let c = load("www-read-token: read-only-token-0123456789\n").unwrap();
    assert_eq!(
        c.console_tokens().read.as_ref().map(Secret::expose),
        Some("read-only-token-0123456789")
    );
}

#[test]
fn a_hash_starts_a_comment_only_after_whitespace() {
    let c = load("cluster-secret: ab#cd # the real comment\n#whole line\n  # indented\n").unwrap();
    assert_eq!(c.cluster_secret, Some(Secret("ab#cd".into())));
}

#[test]
fn zero_durations_are_refused_naming_their_key() {
    for key in [
        "announce-interval",
        "peer-timeout",
        "cluster-timeout",
        "cluster-freshness",
        "hold-time",
        "max-hold",
    ] {
        let got = error_of(&format!("{key}: 0\n"));
        assert!(
            got.contains(&format!(
                "line 1: invalid value for `{key}`: must be more than zero"
            )),
            "{key}: {got}"
        );
    }
    assert!(load("warmup: 0\n").is_ok(), "no warm-up is a choice");
}

#[test]
fn heartbeats_default_to_ten_seconds_and_the_cluster_follows_the_local_one() {
    let c = load("").unwrap();
    assert_eq!((c.rabbitmq_heartbeat, c.cluster_heartbeat), (10, 10));
    let c = load("rabbitmq-heartbeat: 5s\n").unwrap();
    assert_eq!((c.rabbitmq_heartbeat, c.cluster_heartbeat), (5, 5));
    let c = load("rabbitmq-heartbeat: 0\ncluster-heartbeat: 20\n").unwrap();
    assert_eq!((c.rabbitmq_heartbeat, c.cluster_heartbeat), (0, 20));
    for bad in ["500ms", "70000", "soon"] {
        let got = error_of(&format!("cluster-heartbeat: {bad}\n"));
        assert!(got.contains("`cluster-heartbeat`"), "{bad}: {got}");
    }
}

#[test]
fn a_key_given_twice_names_both_lines() {
    let got = error_of("rabbitmq-qos: 10\nmax-hops: 3\nrabbitmq-qos: 20\n");
    assert_eq!(
        got,
        "test.conf line 3: `rabbitmq-qos` is given twice (first at test.conf line 1); remove one"
    );
}

#[test]
fn a_misspelt_key_gets_a_suggestion() {
    assert_eq!(did_you_mean("rabbitmq-qso"), Some("rabbitmq-qos"));
    assert_eq!(did_you_mean("peer-timout"), Some("peer-timeout"));
    assert_eq!(did_you_mean("license-key"), None);
}

#[test]
fn debug_masks_every_password() {
    let c = load("rabbitmq-address: amqp://u:hunter2@h/\ncluster-address: amqp://c:swordfish@k/\n")
        .unwrap();
    let shown = format!("{c:?}");
    for secret in ["hunter2", "swordfish"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(shown.contains("amqp://u:***@h/"), "{shown}");
}

#[test]
fn the_cluster_hash_covers_shared_settings_only() {
    let base = "cluster-address: amqp://x:pw@k/c\nmax-hops: 2\n";
    let a = load(&format!("{base}cluster-name: a\nrabbitmq-outbox: oa\nlocal-ips: 10.0.0.1\nrabbitmq-address: amqp://a:one@h/\n")).unwrap();
    let b = load(&format!("{base}cluster-name: b\nrabbitmq-outbox: ob\nlocal-ips: 10.0.0.2\nrabbitmq-address: amqp://b:two@h/\n")).unwrap();
    assert_eq!(
        a.hash, b.hash,
        "per-instance values and credentials do not count"
    );
    let hops = load(&format!("{base}max-hops: 3\n").replace("max-hops: 2\n", "")).unwrap();
    assert_ne!(a.hash, hops.hash);
    let signed = load(&format!("{base}cluster-secret: s\n")).unwrap();
    assert_ne!(a.hash, signed.hash);
    let other_broker = load("cluster-address: amqp://x:pw@k/other\nmax-hops: 2\n").unwrap();
    assert_ne!(a.hash, other_broker.hash);
    let mesh = load(&format!("{base}cluster-protocol: mesh\n")).unwrap();
    assert_eq!(a.hash, mesh.hash, "the default leaves 0.1's hash as it was");
    let digest = load(&format!("{base}cluster-protocol: digest\n")).unwrap();
    assert_ne!(a.hash, digest.hash);
}

#[test]
fn the_example_config_has_every_key_and_loads() {
    let example = include_str!("../../packaging/mailroute.conf.example");
    for key in KEYS {
        assert!(
            example.contains(&format!("\n#{key}:")),
            "{key} missing in packaging/mailroute.conf.example"
        );
    }
    // Commented out, it is a valid (empty) config.
    assert!(load(example).is_ok());
}

#[test]
fn durations() {
    assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("-1"), None);
    assert_eq!(parse_duration("1 fortnight"), None);
}

//! A bad config stops `mailroute serve` before it touches the broker, naming key and line.

use std::process::Command;

fn serve_with(config: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("mailroute-badconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        "{:x}.conf",
        config.len() * 7919 + config.as_bytes()[0] as usize
    ));
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailroute"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("binary runs");
    let _ = std::fs::remove_file(&path);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_values_stop_startup_with_key_and_line() {
    let (ok, err) = serve_with("rabbitmq-outbox: outbox-a\nrabbitmq-qos: many\n");
    assert!(!ok);
    assert!(
        err.contains("line 2: invalid value for `rabbitmq-qos`"),
        "{err}"
    );
}

#[test]
fn an_unreachable_broker_stops_startup_with_a_masked_address() {
    let (ok, err) = serve_with(
        "rabbitmq-address: amqp://guest:topsecret@127.0.0.1:1/%2f\nlocal-ips: 10.0.0.1\nstartup-timeout: 1s\n",
    );
    assert!(!ok);
    assert!(err.contains("broker not reachable yet; retrying"), "{err}");
    assert!(err.contains("rabbitmq-address: cannot connect"), "{err}");
    assert!(err.contains("guest:***@127.0.0.1:1"), "{err}");
    assert!(!err.contains("topsecret"), "{err}");
}

#[test]
fn a_missing_file_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_mailroute"))
        .args(["serve", "--config", "/nonexistent/mailroute.conf"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read config file /nonexistent/mailroute.conf"),
        "{err}"
    );
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "the OS error once: {err}"
    );
}

#[test]
fn a_misspelt_key_is_a_warning_with_a_suggestion() {
    let (ok, err) = serve_with(
        "rabbitmq-qso: 10\nlocal-ips: 10.0.0.1\nrabbitmq-address: amqp://guest:guest@127.0.0.1:1/\nstartup-timeout: 1s\n",
    );
    assert!(!ok, "the broker is unreachable");
    assert!(err.contains("did you mean rabbitmq-qos?"), "{err}");
}

#[test]
fn json_logs_are_one_object_a_line() {
    let dir = std::env::temp_dir().join(format!("mailroute-jsonlog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("json.conf");
    std::fs::write(
        &path,
        "rabbitmq-address: amqp://guest:guest@127.0.0.1:1/\nlocal-ips: 10.0.0.1\nstartup-timeout: 1s\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailroute"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&path)
        .output()
        .expect("binary runs");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    let logged: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        logged.iter().any(|v| v["level"] == "WARN"
            && v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("broker not reachable yet"))),
        "{err}"
    );
}

//! `mailroute serve` processes from the built binary, with their logs in files.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

pub struct Server {
    pub name: String,
    pub config: PathBuf,
    pub child: Child,
    pub log: PathBuf,
    /// How many times this server was started (each start appends to the same log).
    pub starts: usize,
    /// Environment variables it runs with (`MAILROUTE_<KEY>` overrides, say).
    pub env: Vec<(String, String)>,
    /// A hosts file the process sees as `/etc/hosts` (a mount namespace of its own): one
    /// name resolving to another address per instance, as on separate hosts.
    pub hosts: Option<PathBuf>,
}

/// A config file for instance `name` on `address`: queues `<name>.outbox|deliver|retry|failure`,
/// timings as users run them (a peer missing three 1 s announcements expires; held mail comes
/// back after 2 s). A key in `extra` replaces the default line for it.
pub fn write_config(dir: &Path, address: &str, name: &str, ips: &[IpAddr], extra: &str) -> PathBuf {
    let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
    let defaults = format!(
        "rabbitmq-address: {address}\n\
         rabbitmq-outbox: {name}.outbox\n\
         rabbitmq-deliver: {name}.deliver\n\
         rabbitmq-failure: {name}.failure\n\
         rabbitmq-retry: {name}.retry\n\
         rabbitmq-qos: 200\n\
         cluster-name: {name}\n\
         local-ips: {ips}\n\
         announce-interval: 1s\n\
         peer-timeout: 3s\n\
         hold-time: 2s\n\
         warmup: 1s\n",
        ips = ips.join(", ")
    );
    let overridden = |line: &str| {
        line.split_once(':').is_some_and(|(key, _)| {
            extra.lines().any(|l| {
                l.split_once(':')
                    .is_some_and(|(k, _)| k.trim() == key.trim())
            })
        })
    };
    let mut text = String::from("# written by the integration tests\n");
    for line in defaults.lines().filter(|l| !overridden(l)) {
        text.push_str(line);
        text.push('\n');
    }
    text.push_str(extra);
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, text).expect("config written");
    path
}

impl Server {
    pub fn spawn(dir: &Path, name: &str, config: &Path) -> Server {
        Self::spawn_with_env(dir, name, config, Vec::new())
    }

    pub fn spawn_with_env(
        dir: &Path,
        name: &str,
        config: &Path,
        env: Vec<(String, String)>,
    ) -> Server {
        Self::spawn_full(dir, name, config, env, None)
    }

    /// Runs with `hosts` as its `/etc/hosts` (`unshare -m` and a bind mount; needs root).
    pub fn spawn_with_hosts(dir: &Path, name: &str, config: &Path, hosts: &Path) -> Server {
        Self::spawn_full(dir, name, config, Vec::new(), Some(hosts.to_path_buf()))
    }

    fn spawn_full(
        dir: &Path,
        name: &str,
        config: &Path,
        env: Vec<(String, String)>,
        hosts: Option<PathBuf>,
    ) -> Server {
        let log = dir.join(format!("{name}.log"));
        let child = Self::start(config, &log, &env, hosts.as_deref());
        Server {
            name: name.to_string(),
            config: config.to_path_buf(),
            child,
            log,
            starts: 1,
            env,
            hosts,
        }
    }

    fn start(config: &Path, log: &Path, env: &[(String, String)], hosts: Option<&Path>) -> Child {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let binary = env!("CARGO_BIN_EXE_mailroute");
        let mut command = match hosts {
            // unshare execs the shell and the shell execs mailroute: the child's pid is
            // mailroute's, so signals reach it.
            Some(hosts) => {
                let mut c = Command::new("unshare");
                c.args([
                    "-m",
                    "sh",
                    "-c",
                    r#"mount --bind "$0" /etc/hosts && exec "$@""#,
                ])
                .arg(hosts)
                .arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("mailroute binary starts")
    }

    /// Starts the same instance again after it exited (or was killed).
    pub fn restart(&mut self) {
        let _ = self.child.wait();
        self.child = Self::start(&self.config, &self.log, &self.env, self.hosts.as_deref());
        self.starts += 1;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text().matches(needle).count()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {}", self.name);
    }

    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for mailroute")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until every server has logged `peers` peers joining; shows the log of one that has not.
pub async fn wait_joined(servers: &[Server], peers: usize) {
    for s in servers {
        let joined = mailroute_actors::testkit::wait_for(
            "peers joined",
            std::time::Duration::from_secs(60),
            || async { s.log_count("peer joined") >= peers },
        )
        .await;
        if let Err(e) = joined {
            panic!("{}: {e}\n{}", s.name, s.log_text());
        }
    }
}

/// SIGTERM to every running server; each must drain and exit 0.
pub fn stop_all(servers: &mut [Server]) {
    for s in servers.iter_mut() {
        if s.child.try_wait().ok().flatten().is_none() {
            s.signal("-TERM");
        }
    }
    for s in servers.iter_mut() {
        let status = s.wait();
        assert!(status.success(), "{} exited with {status}", s.name);
    }
}

/// Every server's log, headed by its name.
pub fn logs(servers: &[Server]) -> String {
    servers
        .iter()
        .map(|s| format!("--- {}\n{}", s.name, s.log_text()))
        .collect()
}

//! Defaults read off this machine: its name, its addresses, the console's URL.

use std::net::IpAddr;

/// As MailerQ does: the console's address with this host's name when it listens on every
/// interface (`0.0.0.0:8485` → `http://<hostname>:8485/`); none without an address.
pub(super) fn default_www_url(address: &str) -> Option<String> {
    let (host, port) = address.rsplit_once(':')?;
    let host = match host {
        "" | "0.0.0.0" | "[::]" | "*" => gethostname::gethostname().to_string_lossy().into_owned(),
        host => host.to_string(),
    };
    Some(format!("http://{host}:{port}/"))
}

pub(super) fn default_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Non-loopback addresses of this machine's interfaces.
pub fn detect_local_ips() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|addrs| {
            addrs
                .into_iter()
                .filter(|a| !a.is_loopback())
                .map(|a| a.ip())
                .collect()
        })
        .unwrap_or_default()
}

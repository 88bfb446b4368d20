//! Broker addresses: identity (host:port/vhost, what peers compare) and a printable form with
//! the password masked, so credentials never reach an announcement or a log line.

use lapin::uri::AMQPUri;

#[derive(Debug, thiserror::Error)]
#[error("invalid broker address {masked}: {reason}")]
pub struct AddressError {
    pub masked: String,
    pub reason: String,
}

/// Parses an `amqp://` URI as MailerQ (AMQP-CPP) does: an empty vhost (`amqp://host/` or
/// `amqp://host`) is `/`, RabbitMQ's default. The error shows the address with its password
/// masked. `amqps://` is TLS (port 5671 unless given), verified against the system's roots
/// and the CA of `rabbitmq-ca` / `cluster-ca`.
pub fn parse(address: &str) -> Result<AMQPUri, AddressError> {
    let error = |reason: String| AddressError {
        masked: mask_password(address),
        reason,
    };
    let mut uri = address.parse::<AMQPUri>().map_err(error)?;
    if uri.vhost.is_empty() {
        uri.vhost = "/".into();
    }
    Ok(uri)
}

/// One node of an address list: where to connect, and how to name it in logs.
#[derive(Debug, Clone)]
pub struct Node {
    pub uri: AMQPUri,
    pub masked: String,
}

/// MailerQ's address list: comma-separated URLs, the nodes of one RabbitMQ cluster (or one
/// address). Every entry must parse; the error names the bad one, masked.
pub fn parse_list(addresses: &str) -> Result<Vec<Node>, AddressError> {
    let nodes: Vec<Node> = addresses
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            Ok(Node {
                uri: parse(a)?,
                masked: mask_one(a),
            })
        })
        .collect::<Result<_, AddressError>>()?;
    if nodes.is_empty() {
        return Err(AddressError {
            masked: addresses.to_string(),
            reason: "no address given".into(),
        });
    }
    Ok(nodes)
}

/// The identity of a list: each node's `host:port/vhost`, sorted, comma-separated. Two
/// instances share a broker when their lists have a node in common (see `same_broker`).
pub fn list_identity(nodes: &[Node]) -> String {
    let mut ids: Vec<String> = nodes.iter().map(|n| identity(&n.uri)).collect();
    ids.sort();
    ids.dedup();
    ids.join(",")
}

/// `host:port/vhost`: equal for two instances on the same broker, whatever their credentials.
pub fn identity(uri: &AMQPUri) -> String {
    format!(
        "{}:{}/{}",
        uri.authority.host, uri.authority.port, uri.vhost
    )
}

/// The address as given, with any password replaced by `***`; every address of a
/// comma-separated list (MailerQ's syntax for several brokers) is masked.
pub fn mask_password(address: &str) -> String {
    address
        .split(',')
        .map(mask_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn mask_one(address: &str) -> String {
    let Some((scheme, rest)) = address.split_once("://") else {
        return address.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{scheme}://{masked}@{host}{path}")
        }
        None => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_password("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(mask_password("amqp://host/vh"), "amqp://host/vh");
        assert_eq!(mask_password("amqp://user@host/"), "amqp://user@host/");
        assert_eq!(mask_password("amqp://u:p@ss@host/"), "amqp://u:***@host/");
        assert_eq!(
            mask_password("amqp://a:one@h1/,amqp://b:two@h2/"),
            "amqp://a:***@h1/,amqp://b:***@h2/"
        );
    }

    #[test]
    fn identity_has_no_credentials() {
        let uri = parse("amqp://guest:secret@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(identity(&uri), "127.0.0.1:5672//");
        let uri = parse("amqp://other:pw@127.0.0.1/%2f").unwrap();
        assert_eq!(identity(&uri), "127.0.0.1:5672//");
    }

    #[test]
    fn an_empty_vhost_is_the_default_vhost_as_in_mailerq() {
        for address in [
            "amqp://guest:guest@localhost/",
            "amqp://guest:guest@localhost",
            "amqp://localhost/%2f",
        ] {
            assert_eq!(parse(address).unwrap().vhost, "/", "{address}");
        }
        assert_eq!(parse("amqp://localhost/mail").unwrap().vhost, "mail");
    }

    #[test]
    fn amqps_is_tls_on_its_own_port() {
        let uri = parse("amqps://u:secret@host/").unwrap();
        assert_eq!(uri.scheme, lapin::uri::AMQPScheme::AMQPS);
        assert_eq!(uri.authority.port, 5671);
    }

    #[test]
    fn bad_address_error_is_masked() {
        let err = parse("amqp://guest:secret@host:notaport/").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn an_address_list_is_every_node_with_one_identity_whatever_the_order() {
        let a = parse_list("amqp://u:p@n1:5672/mail, amqp://u:p@n2:5673/mail").unwrap();
        let b = parse_list("amqp://x:y@n2:5673/mail,amqp://x:y@n1:5672/mail").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].masked, "amqp://u:***@n2:5673/mail");
        assert_eq!(list_identity(&a), "n1:5672/mail,n2:5673/mail");
        assert_eq!(list_identity(&a), list_identity(&b));
        let err = parse_list("amqp://u:secret@n1/, amqp://u:secret@n2:bad/").unwrap_err();
        assert_eq!(err.masked, "amqp://u:***@n2:bad/");
        assert!(parse_list(" , ").is_err());
    }
}

//! Typed readers of one key's raw value, each failing with an error that names the key and
//! where its value came from.

use std::net::IpAddr;
use std::time::Duration;

use super::file::{Raw, parse_duration};
use super::secrets::{CaFile, ClientCert, Secret};
use super::{ConfigError, Origin};

pub(super) struct Values<'a> {
    pub(super) raw: &'a Raw,
}

impl Values<'_> {
    pub(super) fn origin(&self, key: &str) -> Origin {
        self.raw
            .get(key)
            .map_or(Origin::Default, |(_, o)| o.clone())
    }

    pub(super) fn error(&self, key: &'static str, reason: String) -> ConfigError {
        ConfigError::Value {
            key,
            origin: self.origin(key),
            reason,
        }
    }

    /// A PEM file of CA certificates, read now so a wrong path stops startup naming the key.
    pub(super) fn ca_file(&self, key: &'static str) -> Result<Option<CaFile>, ConfigError> {
        let path = self.string(key, "")?;
        if path.is_empty() {
            return Ok(None);
        }
        let pem = std::fs::read_to_string(&path)
            .map_err(|e| self.error(key, format!("cannot read {path}: {e}")))?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(self.error(key, format!("{path} holds no PEM certificate")));
        }
        Ok(Some(CaFile { path, pem }))
    }

    /// A client certificate and its key: both or neither, read now so that a wrong path
    /// stops startup naming the key.
    pub(super) fn client_cert(
        &self,
        cert_key: &'static str,
        key_key: &'static str,
    ) -> Result<Option<ClientCert>, ConfigError> {
        let cert = self.ca_file(cert_key)?;
        let key_path = self.string(key_key, "")?;
        match (cert, key_path.is_empty()) {
            (None, true) => Ok(None),
            (Some(_), true) => {
                Err(self.error(key_key, format!("{cert_key} needs its private key")))
            }
            (None, false) => Err(self.error(cert_key, format!("{key_key} needs its certificate"))),
            (Some(cert), false) => {
                let pem = std::fs::read_to_string(&key_path)
                    .map_err(|e| self.error(key_key, format!("cannot read {key_path}: {e}")))?;
                if !pem.contains("PRIVATE KEY-----") {
                    return Err(self.error(key_key, format!("{key_path} holds no PEM private key")));
                }
                Ok(Some(ClientCert {
                    cert,
                    key_path,
                    key_pem: Secret(pem),
                }))
            }
        }
    }

    /// MailerQ's `rabbitmq-verify` / `cluster-verify`: `true` is what mailroute does; `false`
    /// (accept any certificate) is refused rather than silently verified or not.
    pub(super) fn verify(&self, key: &'static str) -> Result<(), ConfigError> {
        match self.string(key, "true")?.as_str() {
            "true" | "yes" | "1" => Ok(()),
            "false" | "no" | "0" => Err(self.error(
                key,
                "turning certificate verification off is not supported: give the CA that \
                 signed the broker's certificate with rabbitmq-ca / cluster-ca instead"
                    .into(),
            )),
            other => Err(self.error(key, format!("expected true or false, got {other:?}"))),
        }
    }

    /// A bearer token: long enough not to be guessed, printable, no spaces. The error never
    /// repeats the value.
    pub(super) fn token(&self, key: &'static str) -> Result<Option<Secret>, ConfigError> {
        let value = self.string(key, "")?;
        if value.is_empty() {
            return Ok(None);
        }
        if value.chars().count() < 16 {
            return Err(self.error(key, "too short: use at least 16 characters".into()));
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.error(key, "must not contain spaces or control characters".into()));
        }
        Ok(Some(Secret(value)))
    }

    pub(super) fn string(&self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        Ok(self
            .raw
            .get(key)
            .map_or_else(|| default.to_string(), |(v, _)| v.clone()))
    }

    /// One of `options` by its name; the first is the default.
    pub(super) fn one_of<T: Copy>(
        &self,
        key: &'static str,
        options: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let default = options.first().map_or("", |(name, _)| *name);
        let value = self.string(key, default)?;
        if let Some((_, chosen)) = options.iter().find(|(name, _)| *name == value) {
            return Ok(*chosen);
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let expected = match names.split_last() {
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        Err(self.error(key, format!("expected {expected}, got {value:?}")))
    }

    /// A queue, exchange or instance name: non-empty, printable, no spaces.
    pub(super) fn name(&self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        let value = self.string(key, default)?;
        if value.is_empty()
            || value.len() > 200
            || value.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(self.error(
                key,
                format!("expected a non-empty name without spaces, got {value:?}"),
            ));
        }
        Ok(value)
    }

    pub(super) fn number(
        &self,
        key: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let Some((value, _)) = self.raw.get(key) else {
            return Ok(default);
        };
        match value.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.error(
                key,
                format!("expected a whole number from {min} to {max}, got {value:?}"),
            )),
        }
    }

    pub(super) fn duration(
        &self,
        key: &'static str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some((value, _)) = self.raw.get(key) else {
            return Ok(default);
        };
        parse_duration(value).ok_or_else(|| {
            self.error(key, format!("expected a duration such as 2, 2s, 500ms, 5m or 1h (bare numbers are seconds), got {value:?}"))
        })
    }

    /// An AMQP heartbeat: whole seconds that fit the protocol's 16 bits; 0 turns it off.
    pub(super) fn heartbeat(&self, key: &'static str, default: u16) -> Result<u16, ConfigError> {
        let value = self.duration(key, Duration::from_secs(default.into()))?;
        if value.subsec_nanos() != 0 || value.as_secs() > u64::from(u16::MAX) {
            return Err(self.error(
                key,
                format!("must be whole seconds from 0 (off) to {}", u16::MAX),
            ));
        }
        Ok(value.as_secs() as u16)
    }

    /// A duration that must not be zero: an interval or a timeout of nothing makes no sense.
    pub(super) fn positive_duration(
        &self,
        key: &'static str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let value = self.duration(key, default)?;
        if value.is_zero() {
            return Err(self.error(key, "must be more than zero".into()));
        }
        Ok(value)
    }

    pub(super) fn ips(&self, key: &'static str) -> Result<Vec<IpAddr>, ConfigError> {
        let value = self.string(key, "")?;
        value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| self.error(key, format!("{s:?} is not an IP address")))
            })
            .collect()
    }
}

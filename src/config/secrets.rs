//! Values that must never be printed: CA files show as their path, a client key and a
//! secret not at all.

use std::fmt;

/// A CA file for TLS: where it was read from, and its PEM certificates.
#[derive(Clone, PartialEq, Eq)]
pub struct CaFile {
    pub path: String,
    pub pem: String,
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

/// A client certificate (PEM chain) and its private key (PEM), read at load. Printed as the
/// two paths: the key never shows.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: CaFile,
    pub key_path: String,
    pub(super) key_pem: Secret,
}

impl ClientCert {
    pub fn key_pem(&self) -> &str {
        self.key_pem.expose()
    }
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} + {}", self.cert.path, self.key_path)
    }
}

/// A secret value: printed as `***`, so a logged config never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

impl Secret {
    /// The value itself, for checking a presented token; never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

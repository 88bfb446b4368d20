//! MailerQ's `key: value` file format, the `MAILROUTE_<KEY>` environment overrides, and the
//! duration syntax the values use.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ConfigError, Origin};

/// Each key's raw value and where it came from.
pub type Raw = BTreeMap<String, (String, Origin)>;

/// A comment starts with `#` at the start of a line or after whitespace, so a value such as
/// `cluster-secret: ab#cd` keeps its `#`.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    let start = bytes
        .iter()
        .enumerate()
        .find(|&(i, &b)| b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()))
        .map(|(i, _)| i);
    start.map_or(line, |i| &line[..i])
}

/// Reads `key: value` lines; `#` after whitespace or at line start begins a comment; a key
/// given twice is an error naming both lines.
pub fn parse_text(text: &str, path: &str) -> Result<Raw, ConfigError> {
    let mut raw = Raw::new();
    for (index, line) in text.lines().enumerate() {
        let origin = Origin::File {
            path: path.to_string(),
            line: index + 1,
        };
        let content = strip_comment(line).trim();
        if content.is_empty() {
            continue;
        }
        let Some((key, value)) = content.split_once(':') else {
            return Err(ConfigError::Syntax {
                origin,
                text: content.to_string(),
            });
        };
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(ConfigError::Syntax {
                origin,
                text: content.to_string(),
            });
        }
        if let Some((_, first)) = raw.get(&key) {
            return Err(ConfigError::Duplicate {
                key,
                first: first.clone(),
                second: origin,
            });
        }
        raw.insert(key, (value.trim().to_string(), origin));
    }
    Ok(raw)
}

/// Applies `MAILROUTE_<KEY>` overrides from `vars`.
pub fn apply_env(raw: &mut Raw, vars: impl IntoIterator<Item = (String, String)>) {
    for (var, value) in vars {
        let Some(rest) = var.strip_prefix("MAILROUTE_") else {
            continue;
        };
        let key = rest.to_ascii_lowercase().replace('_', "-");
        raw.insert(key, (value, Origin::Env(var)));
    }
}

pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" | "seconds" => number,
        "ms" => number / 1000.0,
        "m" | "min" | "minutes" => number * 60.0,
        "h" | "hours" => number * 3600.0,
        _ => return None,
    };
    (seconds.is_finite() && (0.0..1e9).contains(&seconds)).then(|| Duration::from_secs_f64(seconds))
}

//! Which announced console URLs may be followed. A peer's `console_url` is whatever it (or
//! anyone who can publish to the cluster exchange) announced: only an absolute `http`/`https`
//! URL with a host, no credentials in it, is a link or is fetched; anything else (`javascript:`,
//! `data:`, a relative path) is shown as inert text.

/// The URL, normalized, if it is a plain web address.
pub fn web_url(text: &str) -> Option<url::Url> {
    let url = url::Url::parse(text.trim()).ok()?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none();
    plain.then_some(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_web_addresses_pass() {
        for good in [
            "http://a:8485/",
            "https://console.example.net/x",
            " http://10.0.0.1:1 ",
        ] {
            assert!(web_url(good).is_some(), "{good}");
        }
        for bad in [
            "javascript:document.title='pwned'//",
            "JavaScript:alert(1)",
            "data:text/html,<script>1</script>",
            "/relative",
            "http://user:pw@a/",
            "file:///etc/passwd",
            "vbscript:x",
            "",
        ] {
            assert!(web_url(bad).is_none(), "{bad}");
        }
    }
}

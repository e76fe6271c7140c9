//! Which web pages may open sessions: the `Origin` check of a WebSocket upgrade. Browsers send
//! `Origin` on every WebSocket handshake and a page cannot forge it, so checking it stops a
//! hostile page from driving a user's desktop through their browser (cross-site WebSocket
//! hijacking). Clients that are not browsers send no `Origin` and are not affected by it.

use super::request::RequestHead;

/// `Ok` when the upgrade may proceed; `Err` says why not, in words.
///
/// With no configured list, only the gateway's own pages may connect (same origin: the
/// `Origin`'s host and port equal the `Host` the browser sent). With a list, the `Origin` must
/// be one of its entries exactly (`scheme://host[:port]`), or the list contains `*`.
pub fn check(head: &RequestHead, allowed: &[String]) -> Result<(), String> {
    let Some(origin) = head.header("origin") else {
        return Ok(());
    };
    let origin = String::from_utf8_lossy(origin).trim().to_owned();
    let refuse = || {
        Err(format!(
            "origin {origin} is not allowed to open sessions on this gateway"
        ))
    };
    if !allowed.is_empty() {
        if allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(&origin))
        {
            return Ok(());
        }
        return refuse();
    }
    let Some(host) = head.header("host") else {
        return refuse();
    };
    let host = String::from_utf8_lossy(host).trim().to_ascii_lowercase();
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/').to_ascii_lowercase());
    match origin_host {
        Some(h) if h == host || same_with_default_port(&origin, &h, &host) => Ok(()),
        _ => refuse(),
    }
}

/// `http://gw` and `Host: gw:80` (or https and 443) are the same origin.
fn same_with_default_port(origin: &str, origin_host: &str, host: &str) -> bool {
    let port = if origin.starts_with("https://") {
        "443"
    } else {
        "80"
    };
    format!("{origin_host}:{port}") == host || format!("{host}:{port}") == origin_host
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn head(origin: Option<&str>, host: &str) -> RequestHead {
        let mut headers = vec![("Host".to_owned(), host.as_bytes().to_vec())];
        if let Some(o) = origin {
            headers.push(("Origin".to_owned(), o.as_bytes().to_vec()));
        }
        RequestHead {
            method: "GET".into(),
            path: "/ws".into(),
            query: None,
            headers,
        }
    }

    #[test]
    fn same_origin_by_default() {
        assert!(check(&head(Some("http://127.0.0.1:8080"), "127.0.0.1:8080"), &[]).is_ok());
        assert!(check(&head(Some("https://GW.example"), "gw.example:443"), &[]).is_ok());
        let e = check(&head(Some("https://evil.example"), "gw.example"), &[]).unwrap_err();
        assert_eq!(
            e,
            "origin https://evil.example is not allowed to open sessions on this gateway"
        );
        assert!(check(&head(Some("null"), "gw.example"), &[]).is_err());
    }

    #[test]
    fn clients_without_origin_are_not_browsers() {
        assert!(check(&head(None, "gw.example"), &[]).is_ok());
    }

    #[test]
    fn configured_list() {
        let allowed = vec!["https://portal.example".to_owned()];
        assert!(check(&head(Some("https://portal.example"), "gw:8080"), &allowed).is_ok());
        assert!(check(&head(Some("http://gw:8080"), "gw:8080"), &allowed).is_err());
        let any = vec!["*".to_owned()];
        assert!(check(&head(Some("https://x.example"), "gw"), &any).is_ok());
    }
}

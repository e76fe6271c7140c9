//! Response bytes. Every response except the WebSocket upgrade closes the connection: the
//! gateway keeps no idle HTTP connections, so none can hold memory between requests.

use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_owned())],
            body: body.into(),
        }
    }

    /// A plain-text response whose body is one line: the reason, in words.
    pub fn text(status: u16, line: &str) -> Self {
        Response::new(status, "text/plain; charset=utf-8", format!("{line}\n"))
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn unavailable(reason: &str, retry_after_secs: u32) -> Self {
        Response::text(503, reason).with_header("Retry-After", retry_after_secs.to_string())
    }

    /// 429: this client is over a limit of its own; the reason names the limit.
    pub fn too_many(reason: &str, retry_after_secs: u32) -> Self {
        Response::text(429, reason).with_header("Retry-After", retry_after_secs.to_string())
    }

    /// Head and body, ready to write. `head_only` for HEAD requests.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut head = String::with_capacity(256);
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\n",
            self.status,
            reason_phrase(self.status)
        );
        for (n, v) in &self.headers {
            let _ = write!(head, "{n}: {v}\r\n");
        }
        let _ = write!(
            head,
            "Content-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
            self.body.len()
        );
        let mut out = head.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The 101 answer to a valid upgrade, from tungstenite's own validated response.
pub fn switching_protocols(resp: &http::Response<()>) -> Vec<u8> {
    let mut head = String::from("HTTP/1.1 101 Switching Protocols\r\n");
    for (n, v) in resp.headers() {
        let _ = write!(head, "{}: {}\r\n", n, String::from_utf8_lossy(v.as_bytes()));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_has_retry_after_and_reason() {
        let b = Response::unavailable("full: 3 of 3 sessions", 5).to_bytes(false);
        let s = String::from_utf8(b).unwrap();
        assert!(s.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{s}");
        assert!(s.contains("Retry-After: 5\r\n"));
        assert!(s.contains("Connection: close\r\n"));
        assert!(s.ends_with("\r\n\r\nfull: 3 of 3 sessions\n"));
    }

    #[test]
    fn too_many_is_429_with_retry_after() {
        let s =
            String::from_utf8(Response::too_many("too many sessions", 1).to_bytes(false)).unwrap();
        assert!(s.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{s}");
        assert!(s.contains("Retry-After: 1\r\n"));
        assert!(s.ends_with("\r\n\r\ntoo many sessions\n"));
    }

    #[test]
    fn head_only_omits_body_but_keeps_length() {
        let s = String::from_utf8(Response::text(200, "ok").to_bytes(true)).unwrap();
        assert!(s.contains("Content-Length: 3\r\n") && s.ends_with("\r\n\r\n"));
    }
}

//! Request heads, parsed with `httparse`.

use super::HttpError;

/// Most headers a request may carry; a browser's upgrade request has about 15.
pub const MAX_HEADERS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The head as an `http::Request`, for tungstenite's handshake validation.
    pub fn to_http(&self) -> Result<http::Request<()>, HttpError> {
        let uri = match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        };
        let mut b = http::Request::builder()
            .method(self.method.as_str())
            .uri(uri)
            .version(http::Version::HTTP_11);
        for (n, v) in &self.headers {
            b = b.header(n.as_str(), v.as_slice());
        }
        b.body(()).map_err(|e| HttpError::Malformed(e.to_string()))
    }
}

/// Parses a head from the start of `buf`. `Ok(None)`: not complete yet; `Ok(Some((head, n)))`:
/// complete, `n` bytes consumed (anything after belongs to the next protocol, e.g. WebSocket).
pub fn parse_head(buf: &[u8], limit: usize) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            if n > limit {
                return Err(HttpError::HeadTooLarge { limit });
            }
            if req.version != Some(1) {
                return Err(HttpError::Malformed("only HTTP/1.1 is served".to_owned()));
            }
            let target = req.path.unwrap_or("/");
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                None => (target.to_owned(), None),
            };
            let head = RequestHead {
                method: req.method.unwrap_or("").to_owned(),
                path,
                query,
                headers: req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), h.value.to_vec()))
                    .collect(),
            };
            Ok(Some((head, n)))
        }
        Ok(httparse::Status::Partial) if buf.len() >= limit => {
            Err(HttpError::HeadTooLarge { limit })
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::Malformed(format!(
            "more than {MAX_HEADERS} headers"
        ))),
        Err(e) => Err(HttpError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn complete_head_with_query_and_trailing_bytes() {
        let raw = b"GET /ws?target=demo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\nXYZ";
        let (h, n) = parse_head(raw, 8192).unwrap().unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/ws");
        assert_eq!(h.query.as_deref(), Some("target=demo"));
        assert_eq!(h.header("upgrade"), Some(&b"websocket"[..]));
        assert_eq!(&raw[n..], b"XYZ");
    }

    #[test]
    fn partial_then_limits() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHo", 8192).unwrap(), None);
        let big = [b'a'; 100];
        let mut raw = b"GET / HTTP/1.1\r\nX: ".to_vec();
        raw.extend_from_slice(&big);
        assert_eq!(
            parse_head(&raw, 64).unwrap_err(),
            HttpError::HeadTooLarge { limit: 64 }
        );
    }

    #[test]
    fn garbage_and_old_versions_are_malformed() {
        assert!(matches!(
            parse_head(
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
                8192
            ),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.0\r\n\r\n", 8192),
            Err(HttpError::Malformed(_))
        ));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..40 {
            many.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(
            parse_head(&many, 8192),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn converts_to_http_request() {
        let raw = b"GET /ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: abc\r\n\r\n";
        let (h, _) = parse_head(raw, 8192).unwrap().unwrap();
        let r = h.to_http().unwrap();
        assert_eq!(r.uri().path(), "/ws");
        assert_eq!(r.headers()["sec-websocket-key"], "abc");
    }
}

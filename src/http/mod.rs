//! The HTTP/1.1 surface, sans-IO: bytes of a request head in, a routing decision and response
//! bytes out. The runtime shell does the reading, writing and timing.

pub mod origin;
pub mod request;
pub mod response;
pub mod route;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("malformed request head: {0}")]
    Malformed(String),
    #[error("request head larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("connection closed before the request head was complete")]
    Incomplete,
    #[error("no complete request head within {0:?}")]
    Timeout(std::time::Duration),
    #[error("invalid WebSocket upgrade: {0}")]
    BadUpgrade(String),
}

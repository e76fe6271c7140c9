//! Which handler a request head goes to. Admission is not decided here: it needs the core's
//! arena, which only the runtime shell holds.

use super::request::RequestHead;
use crate::web::{self, Asset};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Asset(&'static Asset),
    Healthz,
    Readyz,
    Metrics,
    WebSocket,
    NotFound,
    MethodNotAllowed,
}

pub fn route(head: &RequestHead) -> Route {
    let get_like = head.method == "GET" || head.method == "HEAD";
    let r = match head.path.as_str() {
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/metrics" => Route::Metrics,
        "/ws" => {
            return if head.method == "GET" {
                Route::WebSocket
            } else {
                Route::MethodNotAllowed
            }
        }
        p => match web::asset(p) {
            Some(a) => Route::Asset(a),
            None => Route::NotFound,
        },
    };
    if !get_like && r != Route::NotFound {
        return Route::MethodNotAllowed;
    }
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn head(method: &str, path: &str) -> RequestHead {
        RequestHead {
            method: method.to_owned(),
            path: path.to_owned(),
            query: None,
            headers: vec![],
        }
    }

    #[test]
    fn routes() {
        assert!(matches!(route(&head("GET", "/")), Route::Asset(_)));
        assert_eq!(route(&head("GET", "/healthz")), Route::Healthz);
        assert_eq!(route(&head("HEAD", "/readyz")), Route::Readyz);
        assert_eq!(route(&head("GET", "/metrics")), Route::Metrics);
        assert_eq!(route(&head("GET", "/ws")), Route::WebSocket);
        assert_eq!(route(&head("POST", "/ws")), Route::MethodNotAllowed);
        assert_eq!(route(&head("DELETE", "/metrics")), Route::MethodNotAllowed);
        assert_eq!(route(&head("GET", "/nope")), Route::NotFound);
    }
}

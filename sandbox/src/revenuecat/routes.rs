//! Maps a method and path to an endpoint. Routing is done by hand rather than with
//! `axum::Router` so that every rejection (unknown path, wrong method, bad encoding) is a
//! RevenueCat error object and so that faults and counters see the same `Route`.

use std::borrow::Cow;

use axum::http::Method;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::error::ApiError;
use super::Route;

/// Every path lives under `/v2` (§1).
pub(super) const API_PREFIX: &str = "/v2";

/// Everything except RFC 3986 unreserved characters, for one path segment or query value.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Endpoint {
    ListCurrencies,
    CreateCustomer,
    GetCustomer { customer_id: String },
    Balances { customer_id: String },
    Transaction { customer_id: String },
}

/// A request that matched a route.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) project_id: String,
    pub(super) endpoint: Endpoint,
}

impl Target {
    pub(super) fn route(&self) -> Route {
        match self.endpoint {
            Endpoint::ListCurrencies => Route::ListCurrencies,
            Endpoint::CreateCustomer => Route::CreateCustomer,
            Endpoint::GetCustomer { .. } => Route::GetCustomer,
            Endpoint::Balances { .. } => Route::Balances,
            Endpoint::Transaction { .. } => Route::Transaction,
        }
    }
}

/// Routes a request. Unknown paths are 404 `resource_missing`; a known path with the wrong
/// method is 400 `invalid_request` (§8 table).
pub(super) fn classify(method: &Method, path: &str) -> Result<Target, ApiError> {
    let segments = decoded_segments(path).ok_or_else(ApiError::not_found)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let customer = |id: &str| id.to_owned();
    let (project_id, endpoint, allowed) = match segments.as_slice() {
        ["v2", "projects", pid, "virtual_currencies"] => (pid, Endpoint::ListCurrencies, Method::GET),
        ["v2", "projects", pid, "customers"] => (pid, Endpoint::CreateCustomer, Method::POST),
        ["v2", "projects", pid, "customers", cid] => {
            (pid, Endpoint::GetCustomer { customer_id: customer(cid) }, Method::GET)
        }
        ["v2", "projects", pid, "customers", cid, "virtual_currencies"] => {
            (pid, Endpoint::Balances { customer_id: customer(cid) }, Method::GET)
        }
        ["v2", "projects", pid, "customers", cid, "virtual_currencies", "transactions"] => {
            (pid, Endpoint::Transaction { customer_id: customer(cid) }, Method::POST)
        }
        _ => return Err(ApiError::not_found()),
    };
    if *method != allowed {
        return Err(ApiError::invalid_request(format!("Method {method} is not allowed on this path")));
    }
    Ok(Target { project_id: (*project_id).to_owned(), endpoint })
}

/// Path segments, percent-decoded one by one (§1, §13) so an encoded `/` stays inside its
/// segment. `None` for empty segments or invalid UTF-8.
fn decoded_segments(path: &str) -> Option<Vec<String>> {
    path.strip_prefix('/')?
        .split('/')
        .map(|segment| {
            if segment.is_empty() {
                return None;
            }
            percent_decode_str(segment).decode_utf8().ok().map(Cow::into_owned)
        })
        .collect()
}

/// Percent-encodes one path segment or query value.
pub(super) fn encode(component: &str) -> String {
    utf8_percent_encode(component, COMPONENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_segment_separately() {
        let target = classify(&Method::GET, "/v2/projects/p1/customers/%24RCAnonymousID%3Aa%2Fb").unwrap();
        assert_eq!(target.endpoint, Endpoint::GetCustomer { customer_id: "$RCAnonymousID:a/b".to_owned() });
    }

    #[test]
    fn rejects_unknown_paths_and_wrong_methods() {
        let unknown = classify(&Method::GET, "/v2/projects/p1/nope").unwrap_err();
        assert_eq!(unknown.status().as_u16(), 404);
        let trailing = classify(&Method::GET, "/v2/projects/p1/virtual_currencies/").unwrap_err();
        assert_eq!(trailing.status().as_u16(), 404);
        let wrong_method = classify(&Method::POST, "/v2/projects/p1/virtual_currencies").unwrap_err();
        assert_eq!(wrong_method.status().as_u16(), 400);
    }

    #[test]
    fn encodes_reserved_characters() {
        assert_eq!(encode("$RC:a/b c"), "%24RC%3Aa%2Fb%20c");
        assert_eq!(encode("user_2abc-X.Y~"), "user_2abc-X.Y~");
    }
}

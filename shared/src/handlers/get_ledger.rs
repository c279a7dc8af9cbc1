//! `GET /admin/credits/ledger/{user_id}?limit=&cursor=` (spec §11): the
//! adjustments this API made for one customer, newest first, as JSON or CSV.
//! Served by `get-balances` under its rate limit; no RevenueCat call.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use http::{header, HeaderValue, Method, Response, StatusCode};
use lambda_http::Body;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;

use crate::app::App;
use crate::budget::{Budget, MIN_STORE_CALL};
use crate::config::Function;
use crate::domain::ledger::{to_csv, Cursor, EntryStatus, EntryView, LedgerQuery};
use crate::domain::{ApiError, UserId};
use crate::http::{json_ok, ApiRequest, Endpoint};
use crate::ports::{AdmissionRef, LedgerPage, StoreError};
use crate::secrets::AdminSecret;

pub struct GetLedger;

pub struct LedgerRequest {
    query: LedgerQuery,
    csv: bool,
}

#[derive(Serialize)]
struct LedgerList<'a> {
    user_id: &'a UserId,
    items: Vec<EntryView>,
    next_cursor: Option<String>,
}

const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[async_trait]
impl Endpoint for GetLedger {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/admin/credits/ledger/{user_id}";
    const FUNCTION: Function = Function::GetBalances;
    type Input = LedgerRequest;
    /// The page is read while the rate limiter decides: a ledger read costs
    /// two round trips (admission ‖ page, then the envelopes' delivery state).
    type Prepared = Result<LedgerPage, StoreError>;
    const EXECUTE_NEEDS: Duration = MIN_STORE_CALL;

    fn validate(request: &ApiRequest) -> Result<LedgerRequest, ApiError> {
        let query = LedgerQuery::parse(
            request.path_param("user_id").unwrap_or_default(),
            &request.query_values("limit"),
            &request.query_values("cursor"),
        )?;
        Ok(LedgerRequest { query, csv: wants_csv(request.header(header::ACCEPT).as_deref()) })
    }

    async fn prepare(
        app: &App,
        input: &LedgerRequest,
        _: &ApiRequest,
        _: &AdmissionRef,
        budget: &Budget,
    ) -> Result<LedgerPage, StoreError> {
        let query = &input.query;
        budget
            .try_run(app.ledger.page(query.user_id.as_str(), query.after.as_deref(), query.limit, budget))
            .await
    }

    async fn abandon(_: &App, _: Result<LedgerPage, StoreError>, _: &Budget) {}

    async fn execute(
        app: &App,
        _: &AdminSecret,
        input: LedgerRequest,
        page: Result<LedgerPage, StoreError>,
        request: &ApiRequest,
    ) -> Result<Response<Body>, ApiError> {
        let unavailable = |error: StoreError| {
            tracing::error!(%error, "the ledger cannot be read");
            ApiError::LedgerUnavailable
        };
        let page = page.map_err(unavailable)?;
        let applied: Vec<String> = page
            .entries
            .iter()
            .filter(|e| e.status == EntryStatus::Applied)
            .map(|e| e.entry_id.clone())
            .collect();
        let undelivered = if applied.is_empty() {
            HashSet::new()
        } else {
            request
                .budget
                .try_run(app.ledger.undelivered(&applied, &request.budget))
                .await
                .map_err(unavailable)?
        };
        let items: Vec<EntryView> = page
            .entries
            .into_iter()
            .map(|entry| {
                let notified = !undelivered.contains(&entry.entry_id);
                EntryView::new(entry, notified)
            })
            .collect();
        let user_id = &input.query.user_id;
        let next_cursor = page.last_position.map(|position| Cursor::encode(user_id, &position));
        if !input.csv {
            return Ok(json_ok(&LedgerList { user_id, items, next_cursor }));
        }
        let mut response = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/csv; charset=utf-8")
            .body(Body::Text(to_csv(&items)))
            .expect("static status and header are valid");
        if let Some(cursor) = next_cursor {
            let next = format!(
                "</admin/credits/ledger/{}?limit={}&cursor={cursor}>; rel=\"next\"",
                utf8_percent_encode(user_id.as_str(), PATH_SEGMENT),
                input.query.limit
            );
            let headers = response.headers_mut();
            headers.insert(header::LINK, HeaderValue::from_str(&next).expect("an ASCII header value"));
            headers.insert("next-cursor", HeaderValue::from_str(&cursor).expect("base64url is ASCII"));
        }
        Ok(response)
    }
}

/// CSV when the caller asks for `text/csv` (alone or among other types);
/// JSON otherwise.
fn wants_csv(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept
            .split(',')
            .any(|range| range.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("text/csv"))
    })
}

#[cfg(test)]
mod tests {
    use super::wants_csv;

    #[test]
    fn csv_is_chosen_only_when_asked_for() {
        assert!(wants_csv(Some("text/csv")));
        assert!(wants_csv(Some("application/json;q=0.5, Text/CSV")));
        assert!(!wants_csv(Some("application/json")));
        assert!(!wants_csv(Some("*/*")));
        assert!(!wants_csv(None));
    }
}

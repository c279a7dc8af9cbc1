//! `GET /admin/credits/balances/{user_id}?include_empty=`

use async_trait::async_trait;
use http::{Method, Response};
use lambda_http::Body;
use serde::Serialize;

use std::time::Duration;

use crate::app::App;
use crate::budget::{Budget, MIN_REVENUECAT_CALL};
use crate::config::Function;
use crate::domain::validation::parse_include_empty;
use crate::domain::{ApiError, UserId};
use crate::http::{json_ok, ApiRequest, Endpoint};
use crate::ports::AdmissionRef;
use crate::secrets::AdminSecret;

pub struct GetBalances;

pub struct BalanceQuery {
    user_id: UserId,
    include_empty: bool,
}

#[derive(Serialize)]
struct BalanceList {
    user_id: UserId,
    items: Vec<BalanceItem>,
}

#[derive(Serialize)]
struct BalanceItem {
    currency_code: String,
    name: String,
    balance: i64,
}

#[async_trait]
impl Endpoint for GetBalances {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/admin/credits/balances/{user_id}";
    const FUNCTION: Function = Function::GetBalances;
    type Input = BalanceQuery;
    type Prepared = ();
    const EXECUTE_NEEDS: Duration = MIN_REVENUECAT_CALL;

    fn validate(request: &ApiRequest) -> Result<BalanceQuery, ApiError> {
        let user_id = UserId::parse(request.path_param("user_id").unwrap_or_default())?;
        let include_empty = parse_include_empty(&request.query_values("include_empty"))?;
        Ok(BalanceQuery { user_id, include_empty })
    }

    async fn prepare(_: &App, _: &BalanceQuery, _: &ApiRequest, _: &AdmissionRef, _: &Budget) {}

    async fn abandon(_: &App, _: (), _: &Budget) {}

    async fn execute(
        app: &App,
        secret: &AdminSecret,
        query: BalanceQuery,
        _: (),
        request: &ApiRequest,
    ) -> Result<Response<Body>, ApiError> {
        let balances = app
            .revenuecat
            .balances(&secret.revenuecat, query.user_id.as_str(), query.include_empty, &request.budget)
            .await?;
        let items = balances
            .into_iter()
            // RevenueCat already omits zeros without `include_empty_balances`;
            // filtering again keeps our contract even if it ever does not.
            .filter(|b| query.include_empty || b.balance != 0)
            .map(|b| BalanceItem {
                name: b.name.unwrap_or_else(|| b.currency_code.clone()),
                currency_code: b.currency_code,
                balance: b.balance,
            })
            .collect();
        Ok(json_ok(&BalanceList { user_id: query.user_id, items }))
    }
}

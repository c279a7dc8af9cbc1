//! `GET /admin/credits/currencies`

use async_trait::async_trait;
use http::{Method, Response};
use lambda_http::Body;
use serde::Serialize;

use std::time::Duration;

use crate::app::App;
use crate::budget::{Budget, MIN_REVENUECAT_CALL};
use crate::config::Function;
use crate::domain::ApiError;
use crate::http::{json_ok, ApiRequest, Endpoint};
use crate::ports::AdmissionRef;
use crate::ports::Currency;
use crate::secrets::AdminSecret;

pub struct ListCurrencies;

#[derive(Serialize)]
struct CurrencyList<'a> {
    items: &'a [Currency],
}

#[async_trait]
impl Endpoint for ListCurrencies {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/admin/credits/currencies";
    const FUNCTION: Function = Function::ListCurrencies;
    type Input = ();
    type Prepared = ();
    const EXECUTE_NEEDS: Duration = MIN_REVENUECAT_CALL;

    fn validate(_request: &ApiRequest) -> Result<(), ApiError> {
        Ok(())
    }

    async fn prepare(_: &App, _: &(), _: &ApiRequest, _: &AdmissionRef, _: &Budget) {}

    async fn abandon(_: &App, _: (), _: &Budget) {}

    async fn execute(
        app: &App,
        secret: &AdminSecret,
        _: (),
        _: (),
        request: &ApiRequest,
    ) -> Result<Response<Body>, ApiError> {
        let currencies = app.currencies(&secret.revenuecat, &request.budget).await?;
        Ok(json_ok(&CurrencyList { items: &currencies }))
    }
}

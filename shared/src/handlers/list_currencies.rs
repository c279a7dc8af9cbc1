//! `GET /admin/credits/currencies`

use async_trait::async_trait;
use http::{Method, Response};
use lambda_http::Body;
use serde::Serialize;

use crate::app::App;
use crate::config::Function;
use crate::domain::ApiError;
use crate::http::{json_ok, ApiRequest, Endpoint};
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

    fn validate(_request: &ApiRequest) -> Result<(), ApiError> {
        Ok(())
    }

    async fn prepare(_: &App, _: &(), _: &ApiRequest) {}

    async fn abandon(_: &App, _: ()) {}

    async fn execute(
        app: &App,
        secret: &AdminSecret,
        _: (),
        _: (),
        _: &ApiRequest,
    ) -> Result<Response<Body>, ApiError> {
        let currencies = app.currencies(&secret.revenuecat).await?;
        Ok(json_ok(&CurrencyList { items: &currencies }))
    }
}

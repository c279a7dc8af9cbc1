//! Running under the Lambda Runtime API. HTTP-only functions use
//! `lambda_http::run` directly; `adjust-credits` also receives EventBridge
//! scheduled events, so it dispatches on the event's shape here.

use std::collections::BTreeMap;

use http::Response;
use lambda_http::request::{LambdaRequest, RequestOrigin};
use lambda_http::{Body, Request, RequestExt};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

use crate::http::Router;
use crate::reconcile;

/// The AWS SDK configuration for a Lambda instance. Lambda sets the region
/// and the function role's credentials in the environment; taking them from
/// there directly skips building the default chains' other providers
/// (profile files, SSO, ECS, IMDS, and web identity, which builds a whole STS
/// client with its endpoint rules): ≈ 0.3 ms of a cold start's CPU
/// (docs/performance.md). Without credentials or a region in the
/// environment (outside Lambda) the default chains apply as before.
pub async fn sdk_config() -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(crate::tls::aws_http_client());
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some_and(|v| !v.is_empty()) {
        loader = loader
            .credentials_provider(aws_config::environment::EnvironmentVariableCredentialsProvider::new());
    }
    if let Some(region) = std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()) {
        loader = loader.region(aws_config::Region::new(region));
    }
    loader.load().await
}

/// Serves API Gateway events through `router` and runs one reconciliation
/// pass for each EventBridge `Scheduled Event`.
pub async fn run_http_and_schedule(router: Router) -> Result<(), Error> {
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let router = router.clone();
        async move { handle_event(&router, event).await }
    }))
    .await
}

pub async fn handle_event(router: &Router, event: LambdaEvent<Value>) -> Result<Value, Error> {
    let LambdaEvent { payload, context } = event;
    if is_scheduled_event(&payload) {
        let budget = crate::budget::Budget::from_deadline_ms(context.deadline);
        let summary = reconcile::run_pass(router.app(), budget).await;
        crate::metrics::flush();
        return Ok(serde_json::to_value(summary)?);
    }
    let request: LambdaRequest = serde_json::from_value(payload)
        .map_err(|_| "unsupported event: neither an API Gateway request nor a scheduled event")?;
    let origin = request.request_origin();
    let request: Request = request.into();
    let response = router.handle(request.with_lambda_context(context)).await;
    Ok(gateway_response(&origin, response))
}

fn is_scheduled_event(payload: &Value) -> bool {
    payload.get("source").and_then(Value::as_str) == Some("aws.events")
        && payload.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
}

/// The proxy-integration response for the event's origin: REST APIs (payload
/// 1.0) and HTTP APIs (payload 2.0) read slightly different shapes.
fn gateway_response(origin: &RequestOrigin, response: Response<Body>) -> Value {
    let (parts, body) = response.into_parts();
    let mut headers = BTreeMap::<String, Vec<String>>::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into());
    }
    let joined: BTreeMap<&String, String> = headers.iter().map(|(k, v)| (k, v.join(", "))).collect();
    let body = match body {
        Body::Text(text) => text,
        Body::Binary(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => String::new(),
    };
    match origin {
        RequestOrigin::ApiGatewayV1 => json!({
            "statusCode": parts.status.as_u16(),
            "headers": joined,
            "multiValueHeaders": headers,
            "body": body,
            "isBase64Encoded": false,
        }),
        _ => json!({
            "statusCode": parts.status.as_u16(),
            "headers": joined,
            "cookies": [],
            "body": body,
            "isBase64Encoded": false,
        }),
    }
}

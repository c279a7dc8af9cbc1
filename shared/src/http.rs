//! Routing and the request pipeline. The pipeline's order is part of the
//! contract (spec §3) and lives here once: config → auth → validation →
//! rate limit → the endpoint's own work.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use lambda_http::{Body, Request, RequestExt};
use percent_encoding::percent_decode_str;
use serde::Serialize;

use crate::app::App;
use crate::budget::{Budget, DEFAULT_BUDGET, MIN_STORE_CALL};
use crate::config::Function;
use crate::domain::error::seconds_ceil;
use crate::domain::rate_limit::Admission;
use crate::domain::validation::MAX_BODY_BYTES;
use crate::domain::ApiError;
use crate::ports::AdmissionRef;
use crate::secrets::{bearer_token, AdminSecret};

/// The parts of a request an endpoint may read, already routed.
#[derive(Debug)]
pub struct ApiRequest {
    pub method: Method,
    pub path_params: Vec<(&'static str, String)>,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// Lambda's request id, or a fresh one outside Lambda; it ties log lines together.
    pub request_id: String,
    /// The invocation's time budget: from Lambda's deadline, or a default
    /// outside Lambda. Every upstream call is bounded by it.
    pub budget: Budget,
    /// Who called, as far as the shared token lets us tell: API Gateway's
    /// view of the client address and user agent.
    pub caller: Caller,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Caller {
    fn of(request: &Request) -> Self {
        use lambda_http::request::RequestContext;
        let (from_gateway, agent_from_gateway) = match request.request_context_ref() {
            Some(RequestContext::ApiGatewayV2(context)) => {
                (context.http.source_ip.clone(), context.http.user_agent.clone())
            }
            Some(RequestContext::ApiGatewayV1(context)) => {
                (context.identity.source_ip.clone(), context.identity.user_agent.clone())
            }
            _ => (None, None),
        };
        // Outside API Gateway (the local runner) the socket address is not
        // known here; a forwarding header is the best available hint.
        let source_ip = from_gateway.or_else(|| {
            let forwarded = request.headers().get("x-forwarded-for")?.to_str().ok()?;
            forwarded.split(',').next().map(|ip| ip.trim().to_owned())
        });
        let user_agent = agent_from_gateway.or_else(|| {
            request
                .headers()
                .get(header::USER_AGENT)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        });
        Self { source_ip, user_agent }
    }
}

impl ApiRequest {
    pub fn path_param(&self, name: &str) -> Option<&str> {
        self.path_params.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn query_values(&self, name: &str) -> Vec<&str> {
        self.query.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }

    /// A header's value as text. Bytes that are not UTF-8 become U+FFFD
    /// rather than making the header vanish: a garbled `Idempotency-Key`
    /// must be refused, never silently ignored.
    pub fn header(&self, name: impl header::AsHeaderName) -> Option<Cow<'_, str>> {
        self.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()))
    }
}

/// One route's behaviour. Implementations stay thin: parse input, call ports.
#[async_trait]
pub trait Endpoint: Send + Sync + 'static {
    const METHOD: Method;
    /// A path pattern such as `/admin/credits/balances/{user_id}`.
    const PATH: &'static str;
    const FUNCTION: Function;
    type Input: Send + Sync;
    /// Work started at the same time as the rate-limit admission, so it costs
    /// no extra round trip (the adjustment's idempotency claim).
    type Prepared: Send;
    /// The least time `execute` needs; the steps before it keep this back.
    const EXECUTE_NEEDS: Duration;
    /// Whether the admission marks the counter with the request's ticket,
    /// so a prepared claim can later be told admitted from refused.
    const TICKETED_ADMISSION: bool = false;

    fn validate(request: &ApiRequest) -> Result<Self::Input, ApiError>;

    async fn prepare(
        app: &App,
        input: &Self::Input,
        request: &ApiRequest,
        admission: &AdmissionRef,
        budget: &Budget,
    ) -> Self::Prepared;

    /// Undoes `prepare` when the admission was refused.
    async fn abandon(app: &App, prepared: Self::Prepared, budget: &Budget);

    async fn execute(
        app: &App,
        secret: &AdminSecret,
        input: Self::Input,
        prepared: Self::Prepared,
        request: &ApiRequest,
    ) -> Result<Response<Body>, ApiError>;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Pipeline = Box<dyn Fn(Arc<App>, ApiRequest) -> BoxFuture<Response<Body>> + Send + Sync>;

struct Route {
    method: Method,
    pattern: &'static str,
    pipeline: Pipeline,
}

/// The table of routes one deployment unit serves, usable as a
/// `tower::Service` by `lambda_http::run` and by the local HTTP server alike.
#[derive(Clone)]
pub struct Router {
    app: Arc<App>,
    routes: Arc<Vec<Route>>,
    functions: Vec<Function>,
}

impl Router {
    pub fn new(app: Arc<App>) -> Self {
        Self { app, routes: Arc::new(Vec::new()), functions: Vec::new() }
    }

    pub fn route<E: Endpoint>(mut self) -> Self {
        let routes = Arc::get_mut(&mut self.routes).expect("routes are added before the router is cloned");
        routes.push(Route {
            method: E::METHOD,
            pattern: E::PATH,
            pipeline: Box::new(|app, request| Box::pin(run_pipeline::<E>(app, request))),
        });
        self.functions.push(E::FUNCTION);
        self
    }

    /// Warms up what these routes' first requests need (see `App::warm_up`);
    /// for Lambda init, before the runtime starts polling.
    pub fn warm_up(self) -> Self {
        self.app.warm_up(&self.functions);
        self
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    pub async fn handle(&self, request: Request) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let response = self.dispatch(request).await;
        crate::metrics::flush();
        tracing::info!(
            http.method = %method,
            http.path = %path,
            http.status = response.status().as_u16(),
            latency_ms = started.elapsed().as_millis() as u64,
            "request"
        );
        response
    }

    async fn dispatch(&self, request: Request) -> Response<Body> {
        let path = logical_path(request.uri().path());
        let mut allowed = Vec::new();
        for route in self.routes.iter() {
            let Some(params) = match_path(route.pattern, path) else {
                continue;
            };
            if route.method != request.method() {
                allowed.push(route.method.as_str());
                continue;
            }
            let params = path_params(&request, params);
            let api_request = into_api_request(request, params);
            return (route.pipeline)(self.app.clone(), api_request).await;
        }
        if allowed.is_empty() {
            ApiError::NotFound.into_response()
        } else {
            ApiError::MethodNotAllowed { allow: allow_header(&allowed) }.into_response()
        }
    }
}

impl tower_service::Service<Request> for Router {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let router = self.clone();
        Box::pin(async move { Ok(router.handle(request).await) })
    }
}

async fn run_pipeline<E: Endpoint>(app: Arc<App>, request: ApiRequest) -> Response<Body> {
    let mut admission = None;
    let budget = request.budget;
    let outcome = async {
        // Each step keeps back the least time the steps after it need (spec §3).
        let secret_budget = budget.keeping(MIN_STORE_CALL + E::EXECUTE_NEEDS);
        let authorization = request.header(header::AUTHORIZATION);
        let bearer = bearer_token(authorization.as_deref());
        let secret = secret_budget
            .run(app.secrets.authorize(bearer, &secret_budget))
            .await
            .unwrap_or(Err(ApiError::SecretStoreUnavailable))?;
        if request.body.len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge { limit: MAX_BODY_BYTES });
        }
        let input = E::validate(&request)?;
        // The rate limit decides first (spec §3); overlapping the two calls
        // only saves time, and a refused request's preparation is undone.
        let (ticket, window) = app.admission_for(E::FUNCTION, SystemTime::now(), &request.request_id);
        let step = budget.keeping(E::EXECUTE_NEEDS);
        let (admitted, prepared) = tokio::join!(
            app.admit(&ticket, window, E::TICKETED_ADMISSION, &step),
            E::prepare(&app, &input, &request, &ticket, &step)
        );
        admission = Some(admitted);
        if let Admission::Refused { reset_after, .. } = admitted {
            E::abandon(&app, prepared, &budget).await;
            return Err(ApiError::RateLimited { retry_after: reset_after });
        }
        E::execute(&app, &secret, input, prepared, &request).await
    }
    .await;
    let mut response = outcome.unwrap_or_else(|error| {
        tracing::info!(
            target: "audit",
            request_id = %request.request_id,
            route = E::PATH,
            source_ip = request.caller.source_ip.as_deref().unwrap_or(""),
            user_agent = request.caller.user_agent.as_deref().unwrap_or(""),
            status = error.status().as_u16(),
            detail = %error.detail(),
            "refused"
        );
        crate::metrics::refused(error.code());
        error.into_response()
    });
    if let Some(admission) = admission {
        rate_limit_headers(&admission, response.headers_mut());
    }
    response
}

/// `RateLimit-*` headers (IETF draft "RateLimit header fields for HTTP").
fn rate_limit_headers(admission: &Admission, headers: &mut HeaderMap) {
    let (limit, remaining, reset) = match *admission {
        Admission::Admitted { limit, remaining, reset_after } => (limit, remaining, reset_after),
        Admission::Refused { limit, reset_after } => (limit, 0, reset_after),
        Admission::Uncounted => return,
    };
    headers.insert("ratelimit-limit", HeaderValue::from(limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(seconds_ceil(reset)));
}

/// A JSON 200 response.
pub fn json_ok(body: &impl Serialize) -> Response<Body> {
    let text = serde_json::to_string(body).expect("response types serialise");
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Text(text))
        .expect("static status and header are valid")
}

/// API Gateway REST APIs prefix the stage name (`/prod/admin/...`); one
/// leading segment before the contract's `/admin/` prefix is dropped, no more.
fn logical_path(path: &str) -> &str {
    if path.starts_with("/admin/") {
        return path;
    }
    match path.get(1..).and_then(|rest| rest.find('/')) {
        Some(end) if path[end + 1..].starts_with("/admin/") => &path[end + 1..],
        _ => path,
    }
}

/// Matches `/a/{x}/b` against a path; returns the raw (still encoded) captures.
fn match_path<'p>(pattern: &'static str, path: &'p str) -> Option<Vec<(&'static str, &'p str)>> {
    let mut pattern_segments = pattern.split('/');
    let mut path_segments = path.split('/');
    let mut captures = Vec::new();
    loop {
        match (pattern_segments.next(), path_segments.next()) {
            (None, None) => return Some(captures),
            (Some(p), Some(s)) if p.starts_with('{') && p.ends_with('}') => {
                captures.push((&p[1..p.len() - 1], s))
            }
            (Some(p), Some(s)) if p == s => {}
            _ => return None,
        }
    }
}

/// API Gateway hands over decoded path parameters; elsewhere (the local
/// runner) the captured segment is percent-decoded here. A segment that does
/// not decode to UTF-8 is left out, so the endpoint's validation refuses it
/// instead of looking up a mangled id.
fn path_params(request: &Request, raw: Vec<(&'static str, &str)>) -> Vec<(&'static str, String)> {
    let from_gateway = request.path_parameters_ref();
    raw.into_iter()
        .filter_map(|(name, segment)| {
            let value = match from_gateway.and_then(|p| p.first(name)) {
                Some(decoded) => decoded.to_owned(),
                None => percent_decode_str(segment).decode_utf8().ok()?.into_owned(),
            };
            Some((name, value))
        })
        .collect()
}

fn into_api_request(request: Request, path_params: Vec<(&'static str, String)>) -> ApiRequest {
    let caller = Caller::of(&request);
    let context = request.lambda_context_ref();
    let request_id =
        context.map(|c| c.request_id.clone()).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let budget =
        context.map_or_else(|| Budget::lasting(DEFAULT_BUDGET), |c| Budget::from_deadline_ms(c.deadline));
    let query = request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let (parts, body) = request.into_parts();
    let body = match body {
        Body::Empty => Vec::new(),
        Body::Text(text) => text.into_bytes(),
        Body::Binary(bytes) => bytes,
        _ => Vec::new(),
    };
    ApiRequest {
        method: parts.method,
        path_params,
        query,
        headers: parts.headers,
        body,
        request_id,
        budget,
        caller,
    }
}

fn allow_header(methods: &[&str]) -> &'static str {
    match methods {
        ["GET"] => "GET",
        ["POST"] => "POST",
        _ => "GET, POST",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_with_and_without_a_stage() {
        assert_eq!(logical_path("/prod/admin/credits/currencies"), "/admin/credits/currencies");
        assert_eq!(logical_path("/admin/credits/currencies"), "/admin/credits/currencies");
        assert_eq!(logical_path("/a/b/admin/credits/currencies"), "/a/b/admin/credits/currencies");
        assert_eq!(logical_path("/admin"), "/admin");
        let captures =
            match_path("/admin/credits/balances/{user_id}", "/admin/credits/balances/user_1").unwrap();
        assert_eq!(captures, vec![("user_id", "user_1")]);
        assert!(match_path("/admin/credits/balances/{user_id}", "/admin/credits/balances/a/b").is_none());
        assert!(match_path("/admin/credits/currencies", "/admin/credits/currencies/").is_none());
    }
}

//! Drives the gateway stand-in over real HTTP with reqwest.

use std::time::{Duration, Instant};

use credits_sandbox::{Gate, GatewayFault, GatewayStandIn, SandboxServer};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{json, Value};

const TOKEN: &str = "gw-secret";

struct Gateway {
    stand_in: GatewayStandIn,
    server: SandboxServer,
    client: reqwest::Client,
}

impl Gateway {
    async fn start(expected_bearer: Option<&str>) -> Self {
        let stand_in = GatewayStandIn::new(expected_bearer.map(str::to_owned));
        let server = stand_in.start().await.expect("gateway starts");
        Self { stand_in, server, client: reqwest::Client::new() }
    }

    fn control(&self) -> String {
        format!("{}/internal/control", self.server.base_url())
    }

    fn post(&self, envelope: &Value) -> RequestBuilder {
        self.client.post(self.control()).bearer_auth(TOKEN).json(envelope)
    }
}

fn envelope(id: &str) -> Value {
    json!({"envelope_id": id, "kind": "balance_changed", "payload": {"customer_id": "u1"}})
}

async fn send(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("request succeeds");
    let status = response.status();
    (status, response.json().await.expect("JSON body"))
}

#[tokio::test]
async fn base_url_has_no_path() {
    let gateway = Gateway::start(None).await;
    assert_eq!(gateway.server.base_url(), format!("http://{}", gateway.server.addr()));
}

#[tokio::test]
async fn records_envelopes_and_flags_duplicates() {
    let gateway = Gateway::start(Some(TOKEN)).await;
    let mut duplicates = Vec::new();
    for id in ["e1", "e2", "e1"] {
        let (status, body) = send(gateway.post(&envelope(id))).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body["accepted"], true);
        duplicates.push(body["duplicate"].as_bool().unwrap());
    }
    assert_eq!(duplicates, [false, false, true]);
    assert_eq!(gateway.stand_in.envelopes().len(), 3);
    assert_eq!(gateway.stand_in.envelopes()[1], envelope("e2"));
    assert_eq!(gateway.stand_in.unique_envelope_ids(), ["e1", "e2"]);
    assert_eq!(gateway.stand_in.attempts(), 3);
}

#[tokio::test]
async fn checks_the_bearer() {
    let gateway = Gateway::start(Some(TOKEN)).await;
    let wrong = gateway.client.post(gateway.control()).bearer_auth("nope").json(&envelope("e1"));
    assert_eq!(send(wrong).await.0, StatusCode::UNAUTHORIZED);
    let missing = gateway.client.post(gateway.control()).json(&envelope("e1"));
    assert_eq!(send(missing).await.0, StatusCode::UNAUTHORIZED);
    assert!(gateway.stand_in.envelopes().is_empty());

    gateway.stand_in.set_expected_bearer(None);
    let any = gateway.client.post(gateway.control()).bearer_auth("whatever").json(&envelope("e1"));
    assert_eq!(send(any).await.0, StatusCode::ACCEPTED);
    let missing = gateway.client.post(gateway.control()).json(&envelope("e2"));
    assert_eq!(send(missing).await.0, StatusCode::UNAUTHORIZED, "a bearer is still required");
    assert_eq!(gateway.stand_in.attempts(), 4);
}

#[tokio::test]
async fn rejects_invalid_json_and_unknown_routes() {
    let gateway = Gateway::start(None).await;
    let garbage = gateway.client.post(gateway.control()).bearer_auth(TOKEN).body("{not json");
    assert_eq!(send(garbage).await.0, StatusCode::BAD_REQUEST);

    let elsewhere = format!("{}/internal/other", gateway.server.base_url());
    let (status, _) = send(gateway.client.post(elsewhere).bearer_auth(TOKEN).json(&envelope("e1"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(gateway.client.get(gateway.control()).bearer_auth(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    assert!(gateway.stand_in.envelopes().is_empty());
    assert_eq!(gateway.stand_in.attempts(), 2, "POSTs only");
}

#[tokio::test]
async fn answers_503_while_down() {
    let gateway = Gateway::start(None).await;
    gateway.stand_in.set_down(true);
    assert_eq!(send(gateway.post(&envelope("e1"))).await.0, StatusCode::SERVICE_UNAVAILABLE);
    gateway.stand_in.set_down(false);
    assert_eq!(send(gateway.post(&envelope("e1"))).await.0, StatusCode::ACCEPTED);
    assert_eq!(gateway.stand_in.unique_envelope_ids(), ["e1"]);
    assert_eq!(gateway.stand_in.attempts(), 2);
}

#[tokio::test]
async fn status_fault_for_n_calls() {
    let gateway = Gateway::start(None).await;
    gateway.stand_in.inject(GatewayFault::Status(500), 2);
    gateway.stand_in.inject(GatewayFault::Status(429), 1);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(send(gateway.post(&envelope("e1"))).await.0.as_u16());
    }
    assert_eq!(statuses, [500, 500, 429, 202]);
    assert_eq!(gateway.stand_in.envelopes().len(), 1);
    assert_eq!(gateway.stand_in.attempts(), 4);
}

#[tokio::test]
async fn delay_fault_answers_after_the_delay() {
    let gateway = Gateway::start(None).await;
    gateway.stand_in.inject(GatewayFault::Delay(Duration::from_millis(300)), 1);
    let started = Instant::now();
    let (status, _) = send(gateway.post(&envelope("e1"))).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn delayed_envelope_is_recorded_even_if_the_caller_gave_up() {
    let gateway = Gateway::start(None).await;
    let gate = Gate::new();
    gateway.stand_in.inject(GatewayFault::HoldUntil(gate.clone()), 1);
    let error = gateway.post(&envelope("e1")).timeout(Duration::from_millis(100)).send().await.unwrap_err();
    assert!(error.is_timeout());
    let deadline = Instant::now() + Duration::from_secs(10);
    while gate.waiting() == 0 {
        assert!(Instant::now() < deadline, "the original never reached the gate");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The caller retries; the retry is accepted while the original is still held.
    let (_, body) = send(gateway.post(&envelope("e1"))).await;
    assert_eq!(body["duplicate"], false);
    assert_eq!(gate.waiting(), 1, "the original is still held");
    gate.open();
    while gateway.stand_in.envelopes().len() < 2 {
        assert!(Instant::now() < deadline, "the held original was never recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(gateway.stand_in.envelopes().len(), 2);
    assert_eq!(gateway.stand_in.unique_envelope_ids(), ["e1"]);
}

#[tokio::test]
async fn close_connection_fault_drops_the_connection() {
    let gateway = Gateway::start(None).await;
    gateway.stand_in.inject(GatewayFault::CloseConnection, 1);
    let error = gateway.post(&envelope("e1")).timeout(Duration::from_secs(5)).send().await.unwrap_err();
    assert!(!error.is_timeout(), "closed, not timed out: {error:?}");
    assert!(gateway.stand_in.envelopes().is_empty());
    assert_eq!(send(gateway.post(&envelope("e1"))).await.0, StatusCode::ACCEPTED);
    assert_eq!(gateway.stand_in.attempts(), 2);
}

//! AWS SDK clients and fixtures pointed at a local endpoint (moto).
//!
//! Clients are configured entirely in code — static credentials, fixed region,
//! explicit endpoint — so nothing is read from the developer's environment,
//! `~/.aws`, or the instance-metadata service (which the sandbox refuses and
//! which would otherwise add multi-second timeouts).

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};

pub const REGION: &str = "us-east-1";
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";

/// Shared SDK configuration for `endpoint`, for code under test that builds
/// its own clients from an [`SdkConfig`].
pub fn sdk_config(endpoint: &str) -> SdkConfig {
    let credentials = Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "testkit");
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .endpoint_url(endpoint)
        .build()
}

pub fn dynamodb_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config(endpoint))
}

pub fn secrets_client(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&sdk_config(endpoint))
}

/// Environment a child process (a function binary) needs to reach `endpoint`
/// with the same static credentials, and nothing else: the config-file
/// overrides keep a developer's `~/.aws` profile from leaking in.
pub fn aws_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ("AWS_REGION", REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// `prefix` plus a random suffix: a table or secret name no other test uses,
/// so tests can share one moto server and still run in parallel.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Creates the single-table layout the functions use: string `pk` (hash) and
/// `sk` (range) keys, on-demand billing, TTL on `expires_at`, and the
/// `pending-by-lease` index.
///
/// Panics on failure: a fixture that cannot be set up is a broken test.
pub async fn create_table(endpoint: &str, name: &str) {
    let client = dynamodb_client(endpoint);
    let key = |attr: &str, key_type| {
        KeySchemaElement::builder()
            .attribute_name(attr)
            .key_type(key_type)
            .build()
            .expect("key schema is complete")
    };
    let attr = |attr: &str, kind: ScalarAttributeType| {
        AttributeDefinition::builder()
            .attribute_name(attr)
            .attribute_type(kind)
            .build()
            .expect("attribute definition is complete")
    };
    let string_attr = |name: &str| attr(name, ScalarAttributeType::S);
    // The sparse index reconciliation queries (as in template.yaml).
    let pending_index = GlobalSecondaryIndex::builder()
        .index_name("pending-by-lease")
        .key_schema(key("pending", KeyType::Hash))
        .key_schema(key("lease_until", KeyType::Range))
        .projection(Projection::builder().projection_type(ProjectionType::All).build())
        .build()
        .expect("index definition is complete");
    client
        .create_table()
        .table_name(name)
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .attribute_definitions(string_attr("pk"))
        .attribute_definitions(string_attr("sk"))
        .attribute_definitions(string_attr("pending"))
        .attribute_definitions(attr("lease_until", ScalarAttributeType::N))
        .global_secondary_indexes(pending_index)
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create_table {name}: {e:?}"));

    // Note: moto records the TTL setting but never expires items, so tests
    // must not wait for TTL deletion.
    let ttl = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name("expires_at")
        .build()
        .expect("TTL specification is complete");
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(ttl)
        .send()
        .await
        .unwrap_or_else(|e| panic!("update_time_to_live {name}: {e:?}"));
}

/// Sets secret `name` to `value`: creates it, or — if it exists — stores a new
/// current version, which is how tests simulate a rotation (moto's
/// `RotateSecret` needs a rotation Lambda).
pub async fn put_secret(endpoint: &str, name: &str, value: &str) {
    let client = secrets_client(endpoint);
    let created = client.create_secret().name(name).secret_string(value).send().await;
    match created {
        Ok(_) => {}
        Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_exists_exception()) => {
            client
                .put_secret_value()
                .secret_id(name)
                .secret_string(value)
                .send()
                .await
                .unwrap_or_else(|e| panic!("put_secret_value {name}: {e:?}"));
        }
        Err(e) => panic!("create_secret {name}: {e:?}"),
    }
}

/// The current string value of secret `name`.
pub async fn get_secret(endpoint: &str, name: &str) -> String {
    secrets_client(endpoint)
        .get_secret_value()
        .secret_id(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get_secret_value {name}: {e:?}"))
        .secret_string
        .unwrap_or_else(|| panic!("secret {name} has no string value"))
}

/// Deletes secret `name` immediately (no recovery window), so a test can
/// simulate a missing secret.
pub async fn delete_secret(endpoint: &str, name: &str) {
    secrets_client(endpoint)
        .delete_secret()
        .secret_id(name)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap_or_else(|e| panic!("delete_secret {name}: {e:?}"));
}

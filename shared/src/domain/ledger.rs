//! The credit ledger (spec §11): one entry per adjustment this API sent to
//! RevenueCat, its paging cursor, and its CSV form. No I/O here.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::validation::UserId;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryStatus {
    /// RevenueCat applied it.
    Applied,
    /// Sent, outcome not known yet: do not grant it again by hand.
    Pending,
    /// Sent earlier with an unknown outcome, then definitely refused.
    Rejected,
}

impl EntryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryStatus::Applied => "applied",
            EntryStatus::Pending => "pending",
            EntryStatus::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Settled by the request that made it.
    Api,
    /// Settled by a reconciliation pass.
    Reconciliation,
}

/// One adjustment, as the ledger keeps it. `occurred_at_ms` and `entry_id`
/// are fixed when the adjustment is claimed, so the live request and
/// reconciliation write the very same entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub user_id: String,
    /// The adjustment's envelope id: stable across retries, unique per adjustment.
    pub entry_id: String,
    pub occurred_at_ms: u64,
    pub currency: String,
    pub amount: i64,
    pub balance_after: Option<i64>,
    pub reason: String,
    pub actor: Option<String>,
    pub idempotency_key: Option<String>,
    pub status: EntryStatus,
    pub origin: Origin,
    /// RevenueCat's error type, for rejected entries.
    #[serde(default)]
    pub rc_error: Option<String>,
}

impl LedgerEntry {
    /// The sort key within a user's ledger: time first, so newest-first is a
    /// reverse scan, then the id, so two entries in one millisecond differ.
    pub fn position(&self) -> String {
        format!("{:013}#{}", self.occurred_at_ms, self.entry_id)
    }
}

/// An entry as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryView {
    pub entry_id: String,
    pub occurred_at: String,
    pub currency: String,
    pub amount: i64,
    pub balance_after: Option<i64>,
    pub reason: String,
    pub actor: Option<String>,
    pub idempotency_key: Option<String>,
    pub status: EntryStatus,
    pub origin: Origin,
    /// Whether the app was told: the envelope is neither queued nor dead-lettered.
    pub notified: bool,
}

impl EntryView {
    pub fn new(entry: LedgerEntry, notified: bool) -> Self {
        Self {
            occurred_at: humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(entry.occurred_at_ms),
            )
            .to_string(),
            entry_id: entry.entry_id,
            currency: entry.currency,
            amount: entry.amount,
            balance_after: entry.balance_after,
            reason: entry.reason,
            actor: entry.actor,
            idempotency_key: entry.idempotency_key,
            notified: notified && entry.status == EntryStatus::Applied,
            status: entry.status,
            origin: entry.origin,
        }
    }
}

/// A validated `GET /admin/credits/ledger/{user_id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerQuery {
    pub user_id: UserId,
    pub limit: u32,
    /// Entries strictly older than this position.
    pub after: Option<String>,
}

impl LedgerQuery {
    pub fn parse(user_id: &str, limits: &[&str], cursors: &[&str]) -> Result<Self, ApiError> {
        let user_id = UserId::parse(user_id)?;
        let limit = match limits {
            [] => DEFAULT_PAGE_SIZE,
            [raw] => raw
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_PAGE_SIZE).contains(n) && !raw.starts_with('+'))
                .ok_or(ApiError::InvalidLimit)?,
            _ => return Err(ApiError::InvalidLimit),
        };
        let after = match cursors {
            [] => None,
            [raw] => Some(Cursor::decode(raw, &user_id)?),
            _ => return Err(ApiError::InvalidCursor),
        };
        Ok(Self { user_id, limit, after })
    }
}

/// The opaque `next_cursor`: the last position of a page, bound to its user
/// and sealed with a checksum, so a cursor that was edited, truncated or
/// taken from another user's ledger is refused rather than silently
/// starting somewhere else. (Integrity, not secrecy: an authenticated caller
/// may read any ledger anyway.)
pub struct Cursor;

#[derive(Serialize, Deserialize)]
struct CursorBody {
    u: String,
    p: String,
}

const CURSOR_CHECK_BYTES: usize = 8;

impl Cursor {
    pub fn encode(user_id: &UserId, position: &str) -> String {
        let body = serde_json::to_vec(&CursorBody { u: user_id.as_str().to_owned(), p: position.to_owned() })
            .expect("cursors serialise");
        let mut sealed = checksum(&body).to_vec();
        sealed.extend_from_slice(&body);
        URL_SAFE_NO_PAD.encode(sealed)
    }

    pub fn decode(raw: &str, user_id: &UserId) -> Result<String, ApiError> {
        let sealed = URL_SAFE_NO_PAD.decode(raw).map_err(|_| ApiError::InvalidCursor)?;
        if sealed.len() <= CURSOR_CHECK_BYTES {
            return Err(ApiError::InvalidCursor);
        }
        let (check, body) = sealed.split_at(CURSOR_CHECK_BYTES);
        if check != checksum(body) {
            return Err(ApiError::InvalidCursor);
        }
        let body: CursorBody = serde_json::from_slice(body).map_err(|_| ApiError::InvalidCursor)?;
        if body.u != user_id.as_str() {
            return Err(ApiError::InvalidCursor);
        }
        Ok(body.p)
    }
}

fn checksum(body: &[u8]) -> [u8; CURSOR_CHECK_BYTES] {
    let digest =
        Sha256::new().chain_update(b"credits-admin ledger cursor v1\0").chain_update(body).finalize();
    digest[..CURSOR_CHECK_BYTES].try_into().expect("digest is longer than the check")
}

pub const CSV_HEADER: &str =
    "entry_id,occurred_at,currency,amount,balance_after,reason,actor,idempotency_key,status,origin,notified";

/// RFC 4180 CSV, one header row, CRLF line ends. Values are written as they
/// are (a spreadsheet may read a cell starting with `=` as a formula; open
/// exports as text).
pub fn to_csv(entries: &[EntryView]) -> String {
    let mut out = String::with_capacity(128 * (entries.len() + 1));
    out.push_str(CSV_HEADER);
    out.push_str("\r\n");
    for e in entries {
        let fields = [
            e.entry_id.clone(),
            e.occurred_at.clone(),
            e.currency.clone(),
            e.amount.to_string(),
            e.balance_after.map(|b| b.to_string()).unwrap_or_default(),
            e.reason.clone(),
            e.actor.clone().unwrap_or_default(),
            e.idempotency_key.clone().unwrap_or_default(),
            e.status.as_str().to_owned(),
            match e.origin {
                Origin::Api => "api".to_owned(),
                Origin::Reconciliation => "reconciliation".to_owned(),
            },
            e.notified.to_string(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    #[test]
    fn cursors_round_trip_and_refuse_tampering_and_other_users() {
        let cursor = Cursor::encode(&user("user_a"), "0001700000000000#abc");
        assert_eq!(Cursor::decode(&cursor, &user("user_a")).unwrap(), "0001700000000000#abc");
        assert_eq!(Cursor::decode(&cursor, &user("user_b")), Err(ApiError::InvalidCursor));
        let mut tampered = cursor.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            Cursor::decode(std::str::from_utf8(&tampered).unwrap(), &user("user_a")),
            Err(ApiError::InvalidCursor)
        );
        for junk in ["", "x", "!!!", &cursor[..cursor.len() / 2]] {
            assert_eq!(Cursor::decode(junk, &user("user_a")), Err(ApiError::InvalidCursor), "{junk:?}");
        }
    }

    #[test]
    fn limits() {
        let q = |l: &[&str]| LedgerQuery::parse("user_a", l, &[]).map(|q| q.limit);
        assert_eq!(q(&[]), Ok(50));
        assert_eq!(q(&["1"]), Ok(1));
        assert_eq!(q(&["100"]), Ok(100));
        for bad in ["0", "101", "-1", "+5", "1.0", "", "ten"] {
            assert_eq!(q(&[bad]), Err(ApiError::InvalidLimit), "{bad:?}");
        }
        assert_eq!(q(&["1", "2"]), Err(ApiError::InvalidLimit));
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("Grüße 🎁"), "Grüße 🎁");
    }
}

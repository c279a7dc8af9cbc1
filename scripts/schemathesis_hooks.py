"""Hooks of scripts/schemathesis.sh; a failure not matched here fails the run.

`map_case` keeps idempotency keys from colliding across different generated
adjustments; `after_call` remembers which adjustment each key was bound to;
`filter_failure` drops, by exact match, only failures that are this API's
documented behaviour. Drops are counted at the end.

`python scripts/schemathesis_hooks.py --selftest` shows the filter keeps the
failures it must keep (run by scripts/selftest-checks.sh).
"""

import atexit
import collections
import hashlib
import json
import os
import sys
import urllib.parse

import schemathesis
from schemathesis.core.failures import ServerError
from schemathesis.openapi.checks import RejectedPositiveData

ADJUST = "POST /admin/credits/adjust"
LEDGER = "GET /admin/credits/ledger/{user_id}"
# Unicode White_Space: what Rust's `str::trim` strips (Python's `str.strip`
# also strips U+001C..U+001F, which Rust keeps).
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
# RevenueCat keeps every balance within 0..=2,000,000,000 (the sandbox enforces it).
RC_MAX_BALANCE = 2_000_000_000
DROPPED = collections.Counter()
# Idempotency key -> the fingerprint of the adjustment the server applied under it.
BOUND = {}


def _json(response):
    try:
        value = json.loads(response.content)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _detail(response):
    detail = _json(response).get("detail")
    return detail if isinstance(detail, str) else ""


def _code(response):
    return _detail(response).split(": ", 1)[0]


def _header_name(case, name):
    return next((k for k in (case.headers or {}) if isinstance(k, str) and k.lower() == name.lower()), None)


def _header(case, name):
    found = _header_name(case, name)
    return case.headers[found] if found is not None else None


def _body(case):
    return case.body if isinstance(case.body, dict) else {}


def _valid_key(key):
    """openapi.yaml IdempotencyKey: 1-200 characters, no C0/DEL/C1 control."""
    return isinstance(key, str) and 1 <= len(key) <= 200 and not any(
        ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in key
    )


def _key(case):
    """The request's idempotency key (header or body; None if absent or they differ)."""
    header_key, body_key = _header(case, "Idempotency-Key"), _body(case).get("idempotency_key")
    given = [key for key in (header_key, body_key) if key is not None]
    if not given or any(key != given[0] for key in given):
        return None
    return given[0]


def _fingerprint(case):
    """What the server binds a key to: user_id, amount, currency, trimmed reason."""
    body = _body(case)
    reason = body.get("reason")
    reason = reason.strip(WHITE_SPACE) if isinstance(reason, str) else reason
    currency = body.get("currency")
    return json.dumps([body.get("user_id"), body.get("amount"), "CRD" if currency is None else currency, reason],
                      default=str)


@schemathesis.hook
def map_case(context, case):
    """Keys are global and bound to their first adjustment, so generated keys
    ("0", the examples' ZD-1234-grant, ...) would mostly hit 422
    idempotency_key_reused and never reach RevenueCat. A valid key gets a
    suffix derived from the adjustment's fingerprint (user_id, amount,
    currency, reason): a different adjustment gets a different key, a repeated
    one the same key (a replay). Invalid keys, and header and body keys that
    differ, are left exactly as generated, and so is every negative case
    (a request missing a header, for one, must stay exactly that)."""
    if case.operation.label != ADJUST or not isinstance(case.body, dict):
        return case
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return case
    header_name = _header_name(case, "Idempotency-Key")
    header_key = case.headers[header_name] if header_name is not None else None
    body_key = case.body.get("idempotency_key")
    given = [key for key in (header_key, body_key) if key is not None]
    if not given or not all(_valid_key(key) and key == given[0] for key in given):
        return case
    fingerprint = json.dumps([case.body.get(f) for f in ("user_id", "amount", "currency", "reason")], default=str)
    suffix = "~" + hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
    if given[0].endswith(suffix):
        return case  # mapped already (generated cases can share one body)
    unique = given[0][:180] + suffix
    # New objects, not edits: other generated cases may share these.
    if header_key is not None:
        headers = type(case.headers)(case.headers)
        headers[header_name] = unique
        case.headers = headers
    if body_key is not None:
        case.body = {**case.body, "idempotency_key": unique}
    return case


@schemathesis.hook
def after_call(context, case, response):
    """A key is bound to the adjustment the server first applied under it."""
    if case.operation.label != ADJUST or response.status_code != 200:
        return
    key = _key(case)
    if key is not None and _json(response).get("replayed") is False:
        BOUND.setdefault(key, _fingerprint(case))


# --- What the API is right to do, as documented -----------------------------------


def _current_balance(response, user_id, currency):
    """The user's balance now, asked of the server under test (None if unknown)."""
    base = urllib.parse.urlsplit(response.request.url)
    url = f"{base.scheme}://{base.netloc}/admin/credits/balances/{urllib.parse.quote(user_id, safe='')}"
    token = os.environ.get("CREDITS_ADMIN_TOKEN", "")
    import requests  # schemathesis's own HTTP client

    answer = requests.get(url, params={"include_empty": "true"}, headers={"Authorization": f"Bearer {token}"},
                          timeout=10)
    if answer.status_code != 200:
        return None
    return next((item["balance"] for item in answer.json().get("items", []) if item.get("currency_code") == currency),
                None)


BALANCE = _current_balance  # replaced by the self-test


def _legitimate_refusal(case, response):
    """positive_data_acceptance on the adjustment: a schema-valid request the
    API rightly refuses because of what no schema can say (server state,
    configuration, trimming, two fields that must agree, integer literals)."""
    if response.status_code != 422:
        return False
    code, body = _code(response), _body(case)
    header_key, body_key = _header(case, "Idempotency-Key"), body.get("idempotency_key")
    if code == "idempotency_key_reused":
        # Only if this key was bound to a DIFFERENT adjustment before: a
        # "reused" answer to a genuine replay (same adjustment) stays a failure.
        key = _key(case)
        return key is not None and key in BOUND and BOUND[key] != _fingerprint(case)
    if code == "invalid_idempotency_key":
        # Header and body keys, each valid, that differ.
        return header_key is not None and body_key is not None and header_key != body_key
    if code == "unknown_currency":
        # Any [A-Za-z0-9_]{1,10} is schema-valid; only the project's currencies
        # are accepted (the sandbox has CRD).
        return body.get("currency") not in (None, "CRD")
    if code == "invalid_reason":
        # minLength/maxLength count the raw string; the API counts it trimmed.
        reason = body.get("reason")
        return isinstance(reason, str) and not 3 <= len(reason.strip(WHITE_SPACE)) <= 500
    if code == "invalid_amount":
        # Documented (README, openapi.yaml `amount`): integer literals only. JSON
        # Schema counts 2498.0 as an integer; the API refuses it, so that a parsed
        # 0.99999999999999999 can never become a grant of 1.
        amount = body.get("amount")
        return isinstance(amount, float) and amount.is_integer() and 0 < abs(amount) <= 1_000_000_000
    return False


def _legitimate_server_error(case, response):
    """not_a_server_error on the adjustment: RevenueCat refused a grant that
    would take the balance above its cap, which the spec (section 9, "any other
    RevenueCat failure") and openapi.yaml (502 rc_call_failed: <type>) answer
    with 502. Dropped only when the balance really is that high."""
    body = _body(case)
    amount, user_id = body.get("amount"), body.get("user_id")
    currency = body.get("currency") or "CRD"
    if not (response.status_code == 502 and _detail(response) == "rc_call_failed: unprocessable_entity_error"
            and type(amount) is int and amount > 0 and isinstance(user_id, str)):
        return False
    balance = BALANCE(response, user_id, currency)
    return balance is not None and balance + amount > RC_MAX_BALANCE


@schemathesis.hook
def filter_failure(context, failure, case, response):
    if case.operation.label == LEDGER:
        if isinstance(failure, RejectedPositiveData) and _foreign_cursor(case, response):
            DROPPED["documented: a generated ledger cursor refused with 422 invalid_cursor"] += 1
            return False
        return True
    if case.operation.label != ADJUST:
        return True
    if isinstance(failure, RejectedPositiveData) and _legitimate_refusal(case, response):
        DROPPED[f"documented: schema-valid adjustment refused with 422 {_code(response)}"] += 1
        return False
    if isinstance(failure, ServerError) and _legitimate_server_error(case, response):
        DROPPED["documented: grant above RevenueCat's balance cap answered 502 (spec section 9)"] += 1
        return False
    return True


def _foreign_cursor(case, response):
    """A cursor is opaque and sealed: only one the API handed out for this
    user is valid, and no schema can generate that."""
    return (
        response.status_code == 422
        and _code(response) == "invalid_cursor"
        and (case.query or {}).get("cursor") is not None
    )


@atexit.register
def _summary():
    for reason, count in sorted(DROPPED.items()):
        print(f"schemathesis.sh: dropped {count} x {reason}", file=sys.stderr)


# --- Self-test: the filter keeps what it must keep --------------------------------


def _selftest():
    from types import SimpleNamespace

    global BALANCE
    DROPPED.clear()
    operation = SimpleNamespace(label=ADJUST)
    rejected = RejectedPositiveData.__new__(RejectedPositiveData)
    server_error = ServerError.__new__(ServerError)

    def case(body, headers=None):
        return SimpleNamespace(operation=operation, body=body, headers=headers or {}, meta=None)

    def response(status, body):
        return SimpleNamespace(status_code=status, content=json.dumps(body).encode(),
                               request=SimpleNamespace(url="http://127.0.0.1:1/admin/credits/adjust"))

    def kept(failure, c, r):
        return filter_failure(None, failure, c, r)

    grant = {"user_id": "user_2abcXYZ", "amount": 5, "reason": " ZD-1 grant ", "idempotency_key": "k1"}
    reused = response(422, {"detail": "idempotency_key_reused"})
    checks = []
    checks.append(("a 422 reused for a key never bound is kept", kept(rejected, case(grant), reused)))
    after_call(None, case(grant), response(200, {"replayed": False, "balance": 125}))
    replay = {**grant, "reason": "ZD-1 grant"}  # the same adjustment: reason is trimmed
    checks.append(("a 422 reused answering a genuine replay is kept",
                   kept(rejected, case(replay), reused)))
    checks.append(("a 422 reused answering a genuine replay by header is kept",
                   kept(rejected, case({k: v for k, v in replay.items() if k != "idempotency_key"},
                                       {"Idempotency-Key": "k1"}), reused)))
    checks.append(("a 422 reused for a different adjustment is dropped",
                   not kept(rejected, case({**grant, "amount": 6}), reused)))
    checks.append(("an integral float amount refused is dropped",
                   not kept(rejected, case({**grant, "amount": 100.0}), response(422, {"detail": "invalid_amount"}))))
    checks.append(("a fractional amount refused as a positive case is kept",
                   kept(rejected, case({**grant, "amount": 1.5}), response(422, {"detail": "invalid_amount"}))))
    cap = response(502, {"detail": "rc_call_failed: unprocessable_entity_error"})
    big = {**grant, "amount": 600_000_000}
    BALANCE = lambda *_: 1_500_000_000  # noqa: E731
    checks.append(("a 502 for a grant above the cap is dropped", not kept(server_error, case(big), cap)))
    BALANCE = lambda *_: 120  # noqa: E731
    checks.append(("a 502 for a grant within the cap is kept", kept(server_error, case(big), cap)))
    checks.append(("any other 502 is kept",
                   kept(server_error, case(big), response(502, {"detail": "rc_call_failed: timeout"}))))
    BALANCE = _current_balance
    DROPPED.clear()
    failed = [name for name, ok in checks if not ok]
    for name in failed:
        print(f"hooks selftest FAIL: {name}")
    if failed:
        return 1
    print(f"hooks selftest passed ({len(checks)} cases)")
    return 0


if __name__ == "__main__" and sys.argv[1:] == ["--selftest"]:
    sys.exit(_selftest())

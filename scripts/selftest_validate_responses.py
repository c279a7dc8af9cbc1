#!/usr/bin/env python3
"""Self-test of scripts/validate_responses.py: known-good exchanges pass, and
each known-bad one (a non-conforming response, a function answering 404 on its
own route, a documented response never exercised, ...) fails, for the reason
intended. Run by scripts/selftest-checks.sh; one process, so openapi-core
loads once.

Usage: selftest_validate_responses.py <openapi.yaml>
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import validate_responses  # noqa: E402

ROUTER = {
    "served_by": "router",
    "routes": ["GET /admin/credits/currencies", "GET /admin/credits/balances/{user_id}", "POST /admin/credits/adjust"],
}
LIMITS = {"ratelimit-limit": "60", "ratelimit-remaining": "59", "ratelimit-reset": "30"}


def exchange(method, path, status, body, headers=None, request_body=None, **served):
    return {
        "method": method,
        "path": path,
        "query": "",
        "request_headers": {"content-type": "application/json"} if request_body is not None else {},
        "request_body": request_body,
        "status": status,
        "headers": {"content-type": "application/json", **(headers or {})},
        "body": body if isinstance(body, str) else json.dumps(body),
        **(served or ROUTER),
    }


CURRENCIES = "/admin/credits/currencies"
GOOD = [
    exchange("GET", CURRENCIES, 200,
             {"items": [{"code": "CRD", "name": "Credits", "description": None, "product_grants": []}]}, LIMITS),
    exchange("GET", CURRENCIES, 401, {"detail": "missing_bearer"}),
    # A function asked for another function's path: routed elsewhere, excused.
    exchange("GET", CURRENCIES, 404, {"detail": "not_found"},
             served_by="get-balances", routes=["GET /admin/credits/balances/{user_id}"]),
]

# (what, extra exchanges, --require-coverage, wanted exit status, text the output must contain)
CASES = [
    ("conforming exchanges pass", [], False, 0, "3 exchanges validated, 0 failed"),
    ("a 200 body without its required field fails",
     [exchange("GET", CURRENCIES, 200, {"currencies": []}, LIMITS)], False, 1, "FAIL"),
    ("a detail code the status does not document fails",
     [exchange("POST", "/admin/credits/adjust", 409, {"detail": "rate_limited"}, LIMITS, request_body="{}")],
     False, 1, "is not documented for 409"),
    ("an undocumented status fails",
     [exchange("GET", CURRENCIES, 418, {"detail": "teapot"})], False, 1, "FAIL"),
    ("an HTML 404 on an unknown path fails",
     [exchange("GET", "/admin/credits/nothing", 404, "<h1>Not Found</h1>", {"content-type": "text/html"})],
     False, 1, "FAIL"),
    ("a function answering 404 on its own route fails",
     [exchange("GET", CURRENCIES, 404, {"detail": "not_found"},
               served_by="list-currencies", routes=["GET /admin/credits/currencies"])],
     False, 1, "which list-currencies serves"),
    ("a 404 on a documented path from a unit whose routes are unknown fails",
     [exchange("GET", CURRENCIES, 404, {"detail": "not_found"}, served_by="ledger", routes=None)],
     False, 1, "routes are not recorded"),
    ("a 405 without Allow fails",
     [exchange("DELETE", "/admin/credits/adjust", 405, {"detail": "method_not_allowed"})],
     False, 1, "405 without an Allow header"),
    ("a RateLimit header on an uncounted error fails",
     [exchange("GET", CURRENCIES, 401, {"detail": "missing_bearer"}, LIMITS)],
     False, 1, "header ratelimit-limit is present but not documented"),
    ("a documented status never exercised fails with --require-coverage", [], True, 1,
     "documented but not exercised: POST /admin/credits/adjust 415"),
    ("a missing 405 on a documented path fails with --require-coverage", [], True, 1,
     "documented but not exercised: (undocumented method on /admin/credits/adjust) 405"),
    ("a documented detail code never exercised fails with --require-coverage",
     [exchange("GET", CURRENCIES, 503, {"detail": "admin_unconfigured"})], True, 1,
     "documented but not exercised: GET /admin/credits/currencies 503 secret_store_unavailable"),
    ("a non-conforming exchange does not count as coverage",
     [exchange("GET", CURRENCIES, 413, "payload too large", {"content-type": "text/plain"})], True, 1,
     "documented but not exercised: GET /admin/credits/currencies 413"),
]


def run(spec: str, exchanges: list[dict], require_coverage: bool, directory: Path, name: str) -> tuple[int, str]:
    path = directory / f"{name}.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in exchanges), encoding="utf-8")
    args = [spec, str(path)] + (["--require-coverage"] if require_coverage else [])
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        status = validate_responses.main(args)
    return status, output.getvalue()


def main(argv: list[str]) -> int:
    spec = argv[0] if argv else "docs/openapi.yaml"
    failed = 0
    with tempfile.TemporaryDirectory() as directory:
        for number, (what, extra, coverage, wanted, needle) in enumerate(CASES):
            status, output = run(spec, GOOD + extra, coverage, Path(directory), f"case{number}")
            if status != wanted or needle not in output:
                failed += 1
                print(f"selftest FAIL: validator: {what}: exit {status} (wanted {wanted}), "
                      f"looking for {needle!r} in:")
                print("    " + output.replace("\n", "\n    "))
        status, output = run(spec, [], False, Path(directory), "empty")
        if status != 1 or "no exchanges were read" not in output:
            failed += 1
            print(f"selftest FAIL: validator: no exchanges must fail: exit {status}:\n{output}")
    total = len(CASES) + 1
    if failed:
        print(f"validator selftest: {failed} of {total} cases FAILED")
        return 1
    print(f"validator selftest passed ({total} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

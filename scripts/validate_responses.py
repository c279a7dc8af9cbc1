#!/usr/bin/env python3
"""Check recorded HTTP exchanges against docs/openapi.yaml.

Usage:
    validate_responses.py <openapi.yaml> <exchanges.jsonl> [more.jsonl ...]

Each JSONL line is one exchange recorded by the Rust end-to-end tests
(`target/exchanges/*.jsonl`, written by `testkit/src/stack.rs`):

    {"method": "GET", "path": "/admin/credits/balances/user_2abcXYZ",
     "query": "include_empty=true", "request_headers": {...},
     "request_body": "<string or null>", "status": 200,
     "headers": {"content-type": "application/json", ...}, "body": "<string>",
     "served_by": "get-balances", "routes": ["GET /admin/credits/balances/{user_id}"]}

`served_by` is the function binary that answered ("router": the in-process
router serving every route); `routes` the documented routes it serves
(`null` when the harness does not know them).

Only RESPONSES are validated (the tests send invalid requests on purpose);
the request is used to find the operation. For a documented operation the
response is checked with openapi-core (status documented, content type, body
schema, documented headers) plus two checks openapi-core does not make:

* an error's detail code (the part of `detail` before ": ") must be one of the
  response's `x-detail-codes`;
* the API's own headers (RateLimit-*, Retry-After, Idempotent-Replayed) must
  only appear on responses that document them.

An exchange whose path matches no documented path must be
`404 {"detail": "not_found"}`; one whose method is not documented for its path
must be `405 {"detail": "method_not_allowed"}` with an `Allow` header naming
the documented methods. A documented path answered with
`404 {"detail": "not_found"}` is accepted only from a function that does not
serve that path (each Lambda function routes only its own path, and the tests
may call a function with another function's path; API Gateway never does);
from the function that serves it, or when `routes` is unknown, it is a failure.

With --require-coverage, every response the spec documents must have been
exercised: each operation with each of its documented statuses and each
detail code its `x-detail-codes` list, each documented path with a method it
does not document (405) and a path the spec does not document (404). A
combination no conforming exchange exercised is a failure.

Prints every failure, then `N exchanges validated, M failed`; exits 1 on any
failure or when no exchange was read. Needs scripts/requirements-openapi.txt.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qsl, unquote

import yaml
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Headers this API defines; they must not show up where the spec does not document them.
API_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "retry-after", "idempotent-replayed")
# Routes are matched from this prefix on, as the implementation does (API Gateway
# may put a stage name in front: /prod/admin/...).
ROUTE_PREFIX = "/admin/"
BODY_PREVIEW = 400


@dataclass
class Failure:
    where: str
    exchange: str
    problems: list[str]
    status: Any = None
    body: str = ""


# Coverage keys for the responses outside the documented operations.
UNDOCUMENTED_PATH = "(undocumented path)"
UNDOCUMENTED_METHOD = "(undocumented method on {template})"
ROUTED_ELSEWHERE = "(documented path sent to another function)"


@dataclass
class Stats:
    validated: int = 0
    failures: list[Failure] = field(default_factory=list)
    # "GET /admin/credits/currencies" -> {status: count}, conforming exchanges only
    seen: dict[str, dict[str, int]] = field(default_factory=dict)
    # ("GET /admin/credits/currencies", "503", "admin_unconfigured"), conforming errors only
    codes_seen: set[tuple[str, str, str]] = field(default_factory=set)


class Spec:
    """The raw document (for templates and extensions) plus openapi-core's view."""

    def __init__(self, path: Path):
        with path.open(encoding="utf-8") as f:
            self.raw: dict[str, Any] = yaml.safe_load(f)
        # Validates the document itself; raises on an invalid spec.
        self.openapi = OpenAPI.from_dict(self.raw, base_uri=path.resolve().as_uri())
        self.host_url = self._host_url()
        self.templates = [(t, t.split("/")) for t in self.raw.get("paths", {})]

    def _host_url(self) -> str:
        servers = self.raw.get("servers") or [{"url": "http://localhost"}]
        server = servers[0]
        url = server["url"]
        for name, variable in (server.get("variables") or {}).items():
            url = url.replace("{" + name + "}", str(variable["default"]))
        return url.rstrip("/")

    def resolve(self, node: Any) -> Any:
        """Follows local `$ref`s (`#/components/...`)."""
        seen = 0
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"only local $ref are supported here: {ref}")
            node = self.raw
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            seen += 1
            if seen > 32:
                raise ValueError(f"$ref loop at {ref}")
        return node

    def match(self, path: str) -> tuple[str, dict[str, str]] | None:
        """The documented path template matching `path`, segment by segment:
        a `{param}` segment matches any one segment (even an empty one), like
        the implementation's router."""
        segments = path.split("/")
        for template, pattern in self.templates:
            if len(pattern) != len(segments):
                continue
            params: dict[str, str] = {}
            for expected, actual in zip(pattern, segments):
                if expected.startswith("{") and expected.endswith("}"):
                    params[expected[1:-1]] = unquote(actual)
                elif expected != actual:
                    break
            else:
                return template, params
        return None

    def operations(self, template: str) -> dict[str, Any]:
        item = self.resolve(self.raw["paths"][template])
        return {m: op for m, op in item.items() if m in HTTP_METHODS}

    def response(self, operation: dict[str, Any], status: int) -> dict[str, Any] | None:
        responses = operation.get("responses", {})
        for key in (str(status), f"{str(status)[0]}XX", "default"):
            if key in responses:
                return self.resolve(responses[key])
        return None


def logical_path(path: str) -> str:
    at = path.find(ROUTE_PREFIX)
    return path if at < 0 else path[at:]


def header_map(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        return {}
    out = {}
    for name, value in raw.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        out[str(name).lower()] = "" if value is None else str(value)
    return out


def error_code(body: str) -> tuple[str | None, str | None]:
    """The detail code of an error body, or (None, reason it is not one)."""
    try:
        parsed = json.loads(body)
    except (TypeError, ValueError):
        return None, "body is not JSON"
    if not isinstance(parsed, dict) or set(parsed) != {"detail"} or not isinstance(parsed["detail"], str):
        return None, 'body is not {"detail": "<string>"}'
    return parsed["detail"].split(": ", 1)[0], None


def describe(error: BaseException) -> Iterator[str]:
    """openapi-core errors, with their JSON-schema causes spelled out."""
    text = str(error)
    if not text.startswith(type(error).__name__):
        text = f"{type(error).__name__}: {text}"
    name = getattr(error, "name", None)
    if isinstance(name, str):  # header errors
        text += f" (header {name})"
    yield text if len(text) <= 2 * BODY_PREVIEW else text[: 2 * BODY_PREVIEW] + "…"
    seen = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        for schema_error in getattr(cause, "schema_errors", None) or []:
            location = "/".join(str(p) for p in getattr(schema_error, "absolute_path", []) or [])
            message = getattr(schema_error, "message", str(schema_error))
            yield f"  schema: {message}" + (f" (at /{location})" if location else "")
        cause = cause.__cause__ or cause.__context__


def check_out_of_spec(spec: Spec, ex: dict, status: int, headers: dict[str, str], body: str,
                      template: str | None) -> list[str]:
    problems: list[str] = []
    method = str(ex["method"]).upper()
    if template is None:
        expected_status, expected_code = 404, "not_found"
    else:
        expected_status, expected_code = 405, "method_not_allowed"
    if status != expected_status:
        where = "undocumented path" if template is None else f"method {method} not documented for {template}"
        problems.append(f"{where}: expected status {expected_status} {expected_code}, got {status}")
        return problems
    if not headers.get("content-type", "").lower().startswith("application/json"):
        problems.append(f"content-type is {headers.get('content-type')!r}, expected application/json")
    # A HEAD response carries no body by definition.
    if not (method == "HEAD" and body == ""):
        code, why = error_code(body)
        if code is None:
            problems.append(why)
        elif code != expected_code:
            problems.append(f"detail code is {code!r}, expected {expected_code!r}")
    if template is not None:
        documented = {m.upper() for m in spec.operations(template)}
        allow = headers.get("allow")
        if allow is None:
            problems.append("405 without an Allow header")
        else:
            allowed = {m.strip().upper() for m in allow.split(",") if m.strip()}
            if allowed != documented:
                problems.append(f"Allow is {allow!r}, the spec documents {', '.join(sorted(documented))}")
    return problems


def check_operation(spec: Spec, ex: dict, template: str, params: dict[str, str], path: str,
                    status: int, headers: dict[str, str], body: str) -> list[str]:
    method = str(ex["method"]).lower()
    operation = spec.operations(template)[method]
    request_headers = header_map(ex.get("request_headers"))
    query = ex.get("query") or ""
    request_body = ex.get("request_body")
    request = MockRequest(
        spec.host_url,
        method,
        path,
        path_pattern=template,
        args=parse_qsl(query, keep_blank_values=True),
        view_args=params,
        headers=request_headers,
        data=request_body.encode("utf-8") if isinstance(request_body, str) else None,
        content_type=request_headers.get("content-type", ""),
    )
    response = MockResponse(
        body.encode("utf-8"),
        status_code=status,
        headers=headers,
        content_type=headers.get("content-type", ""),
    )
    problems: list[str] = []
    if "content-type" not in headers:
        problems.append("response has no Content-Type header")
    for error in spec.openapi.iter_response_errors(request, response):
        problems.extend(describe(error))

    documented = spec.response(operation, status)
    if documented is None:
        return problems  # openapi-core reported the undocumented status
    if status >= 400:
        code, why = error_code(body)
        allowed = documented.get("x-detail-codes")
        if code is None:
            problems.append(why)
        elif allowed is not None and code not in allowed:
            problems.append(f"detail code {code!r} is not documented for {status}; documented: {', '.join(allowed)}")
    documented_headers = {name.lower() for name in (documented.get("headers") or {})}
    for name in API_HEADERS:
        if name in headers and name not in documented_headers:
            problems.append(f"header {name} is present but not documented on this {status} response")
    return problems


def served_paths(ex: dict) -> set[str] | None:
    """The documented paths the unit that answered serves, or None if unknown."""
    routes = ex.get("routes")
    if not isinstance(routes, list):
        return None
    return {str(route).split(" ", 1)[-1] for route in routes}


def check_exchange(spec: Spec, ex: dict, stats: Stats) -> list[str]:
    for key in ("method", "path", "status", "body"):
        if key not in ex:
            return [f"exchange has no {key!r}"]
    try:
        status = int(ex["status"])
    except (TypeError, ValueError):
        return [f"status {ex['status']!r} is not a number"]
    body = ex["body"] if isinstance(ex["body"], str) else ("" if ex["body"] is None else json.dumps(ex["body"]))
    headers = header_map(ex.get("headers"))
    path = logical_path(str(ex["path"]))
    method = str(ex["method"]).lower()

    def counted(key: str, problems: list[str]) -> list[str]:
        if not problems:
            stats.seen.setdefault(key, {}).setdefault(str(status), 0)
            stats.seen[key][str(status)] += 1
            code = error_code(body)[0] if status >= 400 else None
            if code is not None:
                stats.codes_seen.add((key, str(status), code))
        return problems

    matched = spec.match(path)
    if matched is None:
        return counted(UNDOCUMENTED_PATH, check_out_of_spec(spec, ex, status, headers, body, None))
    template, params = matched
    # Each Lambda function routes only its own path (spec section 1), so the
    # end-to-end tests may send a documented path to a function that does not
    # own it and get `404 not_found` (API Gateway never does that). The
    # exchange names the routes of the unit that answered, so a function
    # answering `not_found` on its own path is caught, not excused.
    unrouted = (
        status == 404
        and not any(name.startswith("ratelimit-") for name in headers)
        and error_code(body)[0] == "not_found"
    )
    if unrouted:
        served = served_paths(ex)
        if served is None:
            return [f"404 not_found on the documented path {template} from {ex.get('served_by', 'an unknown unit')}"
                    " whose routes are not recorded"]
        if template in served:
            return [f"404 not_found on {template}, which {ex.get('served_by', 'this unit')} serves"]
        return counted(ROUTED_ELSEWHERE, check_out_of_spec(spec, ex, status, headers, body, None))
    if method not in spec.operations(template):
        return counted(UNDOCUMENTED_METHOD.format(template=template),
                       check_out_of_spec(spec, ex, status, headers, body, template))
    return counted(f"{method.upper()} {template}",
                   check_operation(spec, ex, template, params, path, status, headers, body))


def required_coverage(spec: Spec) -> dict[str, set[str]]:
    """Every (key, status) the spec documents: each operation's statuses, a 405
    on each documented path, a 404 on a path it does not document."""
    required: dict[str, set[str]] = {UNDOCUMENTED_PATH: {"404"}}
    for template in spec.raw.get("paths", {}):
        for method, operation in spec.operations(template).items():
            required[f"{method.upper()} {template}"] = {str(s) for s in operation.get("responses", {})}
        required[UNDOCUMENTED_METHOD.format(template=template)] = {"405"}
    return required


def required_codes(spec: Spec) -> set[tuple[str, str, str]]:
    """Every detail code each operation's error responses list in `x-detail-codes`."""
    required = set()
    for template in spec.raw.get("paths", {}):
        for method, operation in spec.operations(template).items():
            for status, response in operation.get("responses", {}).items():
                for code in spec.resolve(response).get("x-detail-codes") or []:
                    required.add((f"{method.upper()} {template}", str(status), code))
    return required


def missing_coverage(spec: Spec, stats: Stats) -> list[str]:
    missing = []
    for key, statuses in required_coverage(spec).items():
        for status in sorted(statuses - set(stats.seen.get(key, {}))):
            missing.append(f"{key} {status}")
    for key, status, code in sorted(required_codes(spec) - stats.codes_seen):
        if status in stats.seen.get(key, {}):  # else reported above already
            missing.append(f"{key} {status} {code}")
    return missing


def read_exchanges(paths: list[Path]) -> Iterator[tuple[str, dict | None, str | None]]:
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            yield str(path), None, f"cannot read: {error}"
            continue
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                exchange = json.loads(line)
            except ValueError as error:
                yield where, None, f"not JSON: {error}"
                continue
            if not isinstance(exchange, dict):
                yield where, None, "line is not a JSON object"
                continue
            yield where, exchange, None


def summary_of(ex: dict | None) -> str:
    if not ex:
        return ""
    query = ex.get("query")
    target = f"{ex.get('path')}?{query}" if query else str(ex.get("path"))
    return f"{ex.get('method')} {target} -> {ex.get('status')}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description="Validate recorded responses (JSONL) against an OpenAPI document.")
    parser.add_argument("spec", type=Path, help="the OpenAPI document (docs/openapi.yaml)")
    parser.add_argument("exchanges", type=Path, nargs="+", help="JSONL files of recorded exchanges")
    parser.add_argument("--quiet", action="store_true", help="no per-operation status coverage")
    parser.add_argument("--require-coverage", action="store_true",
                        help="fail unless every documented response was exercised")
    args = parser.parse_args(argv)

    try:
        spec = Spec(args.spec)
    except Exception as error:  # noqa: BLE001 - any load error is fatal and reported
        print(f"{args.spec}: cannot load the OpenAPI document: {error}", file=sys.stderr)
        return 1

    stats = Stats()
    for where, exchange, error in read_exchanges(args.exchanges):
        if exchange is None:
            if not error or not error.startswith("cannot read"):
                stats.validated += 1  # a line that is not an exchange counts as a failed one
            stats.failures.append(Failure(where, "", [error or "unreadable"]))
            continue
        stats.validated += 1
        try:
            problems = check_exchange(spec, exchange, stats)
        except Exception as unexpected:  # noqa: BLE001 - report, keep going
            problems = [f"validator error: {type(unexpected).__name__}: {unexpected}"]
        if problems:
            body = exchange.get("body")
            body = body if isinstance(body, str) else json.dumps(body)
            stats.failures.append(Failure(where, summary_of(exchange), problems, exchange.get("status"), body))

    for failure in stats.failures:
        print(f"FAIL {failure.where}: {failure.exchange}".rstrip())
        for problem in failure.problems:
            print(f"    {problem}")
        if failure.body:
            preview = failure.body if len(failure.body) <= BODY_PREVIEW else failure.body[:BODY_PREVIEW] + "…"
            print(f"    body: {preview}")

    if not args.quiet and stats.seen:
        print("statuses seen per operation (conforming exchanges):")
        for key in sorted(stats.seen):
            counts = ", ".join(f"{s}×{n}" for s, n in sorted(stats.seen[key].items()))
            print(f"  {key}: {counts}")

    missing = missing_coverage(spec, stats)
    for combination in missing:
        print(f"{'FAIL' if args.require_coverage else 'note'} coverage: documented but not exercised: {combination}")

    print(f"{stats.validated} exchanges validated, {len(stats.failures)} failed")
    if stats.validated == 0:
        print("error: no exchanges were read", flush=True)
        return 1
    if args.require_coverage:
        print(f"coverage: {len(missing)} documented response(s) not exercised" if missing
              else "coverage: every documented response was exercised")
    return 1 if stats.failures or (args.require_coverage and missing) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

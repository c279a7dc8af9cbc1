"""Translates template.yaml with SAM's own translator (offline) and asserts
each function's IAM statements: least privilege per function, with
`dynamodb:LeadingKeys` limiting every table statement to the items the
function owns, and URL parameters that refuse http://.

    .venv/bin/python scripts/check_iam.py template.yaml

Exits non-zero with one line per problem. A self-test (run first) proves the
check fails on a template with a widened policy.
"""

import copy
import os
import re
import sys

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class NoManagedPolicies:
    """The translator asks for AWS managed policy ARNs; this template uses none."""

    def load(self):
        return {}


SECRET_READ = ("secretsmanager:GetSecretValue",)

# Per function: DynamoDB action -> the leading keys it may touch (None: an
# index query, which LeadingKeys does not apply to).
EXPECTED = {
    "ListCurrenciesFunction": {
        "dynamodb:UpdateItem": {"ratelimit#list-currencies", "warmup"},
        "dynamodb:GetItem": {"ratelimit#list-currencies", "warmup"},
    },
    "GetBalancesFunction": {
        "dynamodb:UpdateItem": {"ratelimit#get-balances", "warmup"},
        "dynamodb:GetItem": {"ratelimit#get-balances", "warmup"},
        "dynamodb:Query": {"ledger#*"},
        "dynamodb:BatchGetItem": {"outbox", "outbox-dead"},
    },
    "AdjustCreditsFunction": {
        "dynamodb:UpdateItem": {"ratelimit#adjust-credits", "warmup", "idem#*", "outbox", "outbox-dead", "ledger#*"},
        "dynamodb:PutItem": {"ratelimit#adjust-credits", "warmup", "idem#*", "outbox", "outbox-dead", "ledger#*"},
        "dynamodb:GetItem": {"ratelimit#adjust-credits", "warmup", "idem#*", "outbox", "outbox-dead", "ledger#*"},
        "dynamodb:DeleteItem": {"ratelimit#adjust-credits", "warmup", "idem#*", "outbox", "outbox-dead", "ledger#*"},
        "dynamodb:Query@index": None,
    },
}


def translate(template):
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    parameters = {"AWS::Region": "us-east-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws"}
    packaged = copy.deepcopy(template)
    # As `sam package` leaves it: code in S3 instead of a local folder.
    for resource in packaged["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://bucket/function.zip"
    return transform(packaged, parameters, NoManagedPolicies())


def as_list(value):
    return value if isinstance(value, list) else [value]


def statements(resources, function):
    role = resources[f"{function}Role"]["Properties"]
    found = []
    for policy in role.get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            if isinstance(statement, dict) and "Fn::If" in statement:
                # The optional KMS grant: both branches are checked.
                found.extend(s for s in statement["Fn::If"][1:] if isinstance(s, dict) and "Effect" in s)
            else:
                found.append(statement)
    managed = role.get("ManagedPolicyArns", [])
    return found, managed


def leading_keys(statement):
    condition = statement.get("Condition", {})
    for operator in ("ForAllValues:StringEquals", "ForAllValues:StringLike"):
        keys = condition.get(operator, {}).get("dynamodb:LeadingKeys")
        if keys is not None:
            return set(as_list(keys))
    return None


def is_index(resource):
    text = repr(resource)
    return "/index/" in text


def check(template):
    problems = []
    resources = translate(template)["Resources"]
    for function, expected in EXPECTED.items():
        found, managed = statements(resources, function)
        for arn in managed:
            if "AWSLambdaBasicExecutionRole" not in repr(arn):
                problems.append(f"{function}: unexpected managed policy {arn}")
        granted = {}
        for statement in found:
            if statement.get("Effect") != "Allow":
                continue
            for action in as_list(statement["Action"]):
                if action in SECRET_READ or action == "kms:Decrypt":
                    continue
                if not action.startswith("dynamodb:"):
                    problems.append(f"{function}: unexpected action {action}")
                    continue
                if "*" in action:
                    problems.append(f"{function}: wildcard action {action}")
                key = f"{action}@index" if any(is_index(r) for r in as_list(statement["Resource"])) else action
                granted[key] = leading_keys(statement)
        for action, keys in expected.items():
            if action not in granted:
                problems.append(f"{function}: missing {action}")
            elif granted[action] != keys:
                problems.append(f"{function}: {action} limited to {granted[action]}, expected {keys}")
        for action in granted.keys() - expected.keys():
            problems.append(f"{function}: {action} is not needed")
    for name in ("GatewayUrl", "RevenueCatApiUrl"):
        pattern = template["Parameters"][name]["AllowedPattern"]
        if re.fullmatch(pattern, "http://gateway.example.com"):
            problems.append(f"parameter {name} accepts http://")
        if not re.fullmatch(pattern, "https://gateway.example.com"):
            problems.append(f"parameter {name} refuses https://")
    return problems


def self_test(template):
    """A widened policy and an http:// URL must each be caught."""
    widened = copy.deepcopy(template)
    for statement in widened["Resources"]["GetBalancesFunction"]["Properties"]["Policies"][0]["Statement"]:
        if isinstance(statement, dict):
            statement.pop("Condition", None)
    if not check(widened):
        sys.exit("check_iam: self-test failed: a policy without LeadingKeys passed")
    clear = copy.deepcopy(template)
    clear["Parameters"]["GatewayUrl"]["AllowedPattern"] = "^https?://[^\\s]+$"
    if not any("accepts http://" in p for p in check(clear)):
        sys.exit("check_iam: self-test failed: an http:// URL parameter passed")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "template.yaml"
    with open(path, encoding="utf-8") as f:
        template = yaml_parse(f.read())
    self_test(template)
    problems = check(template)
    for problem in problems:
        print(f"check_iam: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"check_iam: {len(EXPECTED)} functions' IAM statements are least privilege; URL parameters need https://")


if __name__ == "__main__":
    main()

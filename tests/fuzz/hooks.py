"""Schemathesis hooks for `make fuzz`: the fleet's own response checks.

Loaded through SCHEMATHESIS_HOOKS by tests/fuzz/run.py; `errors_shape` is then
a check name for `--checks`.
"""

import json

import schemathesis

ITEM_KEYS = {"message", "field"}


def error_shape_problem(body):
    """What is wrong with an error body, or None if it is the fleet's shape:
    {"errors": [{"message": str, "field"?: str}, ...]} and nothing else."""
    if not isinstance(body, dict) or set(body) != {"errors"}:
        return "not an object whose only key is `errors`"
    errors = body["errors"]
    if not isinstance(errors, list) or not errors:
        return "`errors` is not a non-empty array"
    for item in errors:
        if not isinstance(item, dict):
            return "an entry of `errors` is not an object"
        if not isinstance(item.get("message"), str) or not item["message"]:
            return "an entry of `errors` has no `message` string"
        if "field" in item and not isinstance(item["field"], str):
            return "an entry's `field` is not a string"
        if set(item) - ITEM_KEYS:
            return f"an entry of `errors` has other keys: {sorted(set(item) - ITEM_KEYS)}"
    return None


@schemathesis.check
def errors_shape(ctx, response, case):
    """Every 4xx answer is JSON in the fleet's error shape (DESIGN §3)."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = ";".join(response.headers.get("content-type", []))
    if not content_type.startswith("application/json"):
        raise AssertionError(
            f"{response.status_code} with content type {content_type or 'none'!r}, not JSON: "
            f"{response.content[:300]!r}"
        )
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.content[:300]!r}") from None
    problem = error_shape_problem(body)
    if problem:
        raise AssertionError(f"{response.status_code} body is not in the errors shape ({problem}): {body!r:.300}")
    return None

"""Independent Standard Webhooks verifier (PyPI `standardwebhooks`) for
Sluice's tests.

FILE is a JSON array of deliveries, each
    {"secrets": ["whsec_..."],
     "headers": {"webhook-id": ..., "webhook-timestamp": ..., "webhook-signature": ...},
     "body": "<raw body string>"}
Every delivery must verify with EVERY secret listed (during a rotation both
the old and the new secret sign). The library refuses timestamps more than
five minutes away from now, so FILE must hold fresh deliveries.

Prints `verified N deliveries` and exits 0, or prints each failing
delivery/secret and exits 1.

usage: verify_webhooks.py FILE
"""
import json
import sys

from standardwebhooks.webhooks import Webhook


def describe(index, delivery):
    headers = delivery.get("headers") or {}
    return f"delivery {index} (webhook-id {headers.get('webhook-id')!r})"


def check(index, delivery):
    """Returns the failure messages of one delivery (empty when it verifies)."""
    if not isinstance(delivery, dict):
        return [f"delivery {index}: not a JSON object"]
    secrets, headers, body = delivery.get("secrets"), delivery.get("headers"), delivery.get("body")
    if not isinstance(secrets, list) or not secrets:
        return [f"{describe(index, delivery)}: no secrets listed"]
    if not isinstance(headers, dict) or not isinstance(body, str):
        return [f"{describe(index, delivery)}: needs a `headers` object and a `body` string"]
    failures = []
    for number, secret in enumerate(secrets):
        try:
            Webhook(secret).verify(body, headers)
        except Exception as error:  # the library raises more than WebhookVerificationError
            failures.append(
                f"{describe(index, delivery)}: secret {number} ({str(secret)[:10]}...) failed: "
                f"{type(error).__name__}: {error}"
            )
    return failures


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: verify_webhooks.py FILE")
    with open(sys.argv[1], encoding="utf-8") as f:
        deliveries = json.load(f)
    if not isinstance(deliveries, list):
        raise SystemExit(f"{sys.argv[1]}: expected a JSON array of deliveries")
    failures = [message for i, d in enumerate(deliveries) for message in check(i, d)]
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"verified {len(deliveries)} deliveries")


if __name__ == "__main__":
    main()

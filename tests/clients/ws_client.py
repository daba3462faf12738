"""Drives Sluice's WebSocket endpoint with the `websockets` package (PyPI).

Usage: ws_client.py WS_URL SERVICE_KEY

Talks to the Rust test over stdin/stdout: prints READY once subscribed and
waits for a line; prints PUBLISHED after publishing and waits again; then
checks what arrived and prints OK (exit 0) or the failure (exit 1).
"""

import asyncio
import json
import sys

import websockets


def fail(msg):
    print("FAIL " + msg, flush=True)
    sys.exit(1)


async def recv(ws, timeout=60):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def expect(ws, kind, **members):
    m = await recv(ws)
    if m.get("type") != kind or any(m.get(k) != v for k, v in members.items()):
        fail(f"expected {kind} {members}, got {m}")
    return m


async def collect(ws, want, events):
    """Reads until `want(events)` holds; events are (sub, envelope)."""
    while not want(events):
        m = await recv(ws)
        if m.get("type") == "event":
            events.append((m["sub"], m["event"]))
        elif m.get("type") not in ("unsubscribed", "published"):
            fail(f"unexpected message {m}")


async def main(url, key):
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        await expect(ws, "pong")
        await ws.send(json.dumps({"type": "auth", "token": key}))
        await expect(ws, "auth_ok", tenant="acme", role="service")
        await ws.send(json.dumps({
            "type": "subscribe", "id": "reds", "topic": "tables/public.items/*",
            "filter": {"field": "new.color", "op": "eq", "value": "red"}}))
        await expect(ws, "subscribed", id="reds")
        await ws.send(json.dumps({
            "type": "subscribe", "id": "all",
            "topics": ["tables/public.items/insert", "custom/*"]}))
        await expect(ws, "subscribed", id="all")
        print("READY", flush=True)
        sys.stdin.readline()  # the test wrote rows 1..4 (red, blue, red, blue)
        events = []
        await collect(ws, lambda e: len(e) >= 6, events)
        reds = [ev["data"]["new"]["id"] for sub, ev in events if sub == "reds"]
        alls = [ev["data"]["new"]["id"] for sub, ev in events if sub == "all"]
        if reds != [1, 3] or alls != [1, 2, 3, 4]:
            fail(f"reds {reds}, all {alls}")
        await ws.send(json.dumps({"type": "unsubscribe", "id": "reds"}))
        await expect(ws, "unsubscribed", id="reds")
        # A forged tenant is ignored: the credential's tenant is used.
        await ws.send(json.dumps({"type": "publish", "event": "order.shipped",
                                  "tenant": "globex", "data": {"order": 7}}))
        published = None
        later = []
        while published is None:
            m = await recv(ws)
            if m.get("type") == "published":
                published = m["seq"]
            elif m.get("type") == "event":
                later.append((m["sub"], m["event"]))
            else:
                fail(f"unexpected {m}")
        print("PUBLISHED", flush=True)
        sys.stdin.readline()  # the test wrote row 5 (red) after the publish
        await collect(ws, lambda e: len(e) >= 2, later)
        subs = {s for s, _ in later}
        if subs != {"all"}:
            fail(f"events after unsubscribe came on {subs}")
        seqs = [ev["seq"] for _, ev in later]
        if seqs != sorted(seqs):
            fail(f"out of order: {seqs}")
        own = [ev for _, ev in later if ev["type"] == "custom.order.shipped"]
        if len(own) != 1 or own[0]["seq"] != published or own[0]["tenant"] != "acme":
            fail(f"own event {own}, published seq {published}")
        if own[0]["data"] != {"order": 7}:
            fail(f"data {own[0]['data']}")
        row5 = [ev for _, ev in later if ev["type"] == "row.inserted"]
        if len(row5) != 1 or row5[0]["seq"] <= published:
            fail(f"row 5 {row5} should follow the published event {published}")
        print("OK", flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2]))

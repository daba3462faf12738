"""Independent SSE client (httpx + httpx-sse from PyPI) for Sluice's tests.

Subscribes with an anon key in the query string, reads `cut` events,
disconnects, reconnects with Last-Event-ID and reads until `total` events
arrived. Prints what it received as one JSON line.

usage: sse_resume.py BASE_URL APIKEY TOTAL CUT
"""
import json
import sys

import httpx
from httpx_sse import connect_sse


def read(client, url, params, headers, received, until):
    last_id = None
    with connect_sse(client, "GET", url, params=params, headers=headers) as source:
        if source.response.status_code != 200:
            raise SystemExit(f"status {source.response.status_code}: {source.response.read()!r}")
        for sse in source.iter_sse():
            if not sse.data:
                continue
            received.append({"id": sse.id, "event": sse.event, "envelope": json.loads(sse.data)})
            last_id = sse.id
            if len(received) >= until:
                break
    return last_id


def main():
    base, apikey, total, cut = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    url = f"{base}/v1/events/subscribe"
    received = []
    with httpx.Client(timeout=httpx.Timeout(120.0)) as client:
        last_id = read(client, url, {"apikey": apikey, "from": "1"}, {}, received, cut)
        read(client, url, {"apikey": apikey}, {"Last-Event-ID": last_id}, received, total)
    print(json.dumps(received))


if __name__ == "__main__":
    main()

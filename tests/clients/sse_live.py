"""Independent SSE client (httpx + httpx-sse from PyPI) for Sluice's live
queries.

Subscribes with snapshot=true and reads the rows until `synced` (printing
{"synced": <id>} then), then `changes` changes; disconnects and reconnects
with Last-Event-ID (the last id the client saw, as a browser's EventSource
would send it), and reads `more` changes. Prints every event it received as
one JSON line each, then {"done": true}.

usage: sse_live.py BASE_URL APIKEY TABLE CHANGES MORE
"""
import json
import sys

import httpx
from httpx_sse import connect_sse


def emit(v):
    print(json.dumps(v), flush=True)


def main():
    base, apikey, table = sys.argv[1], sys.argv[2], sys.argv[3]
    changes, more = int(sys.argv[4]), int(sys.argv[5])
    url = f"{base}/v1/events/subscribe"
    params = {"apikey": apikey, "table": table, "snapshot": "true"}
    last_id = None
    with httpx.Client(timeout=httpx.Timeout(120.0)) as client:
        after = 0
        with connect_sse(client, "GET", url, params=params) as source:
            if source.response.status_code != 200:
                raise SystemExit(f"status {source.response.status_code}")
            for sse in source.iter_sse():
                if not sse.data:
                    continue
                if sse.id:
                    last_id = sse.id
                if sse.event == "synced":
                    emit({"synced": sse.id, "data": json.loads(sse.data)})
                    continue
                emit({"phase": "first", "id": sse.id, "event": sse.event, "envelope": json.loads(sse.data)})
                if last_id is not None:
                    after += 1
                    if after == changes:
                        break
        got = 0
        with connect_sse(client, "GET", url, params=params, headers={"Last-Event-ID": last_id}) as source:
            for sse in source.iter_sse():
                if not sse.data:
                    continue
                emit({"phase": "resumed", "id": sse.id, "event": sse.event, "envelope": json.loads(sse.data)})
                got += 1
                if got == more:
                    break
    emit({"done": True})


if __name__ == "__main__":
    main()

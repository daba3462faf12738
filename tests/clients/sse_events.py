"""Independent SSE client (httpx + httpx-sse from PyPI) reading a stream as
a browser's EventSource would name its events.

Subscribes from seq 1 with an anon key in the query string and the given
`mode` (`typed` or `message`) and prints one JSON line per event as it
arrives: {"event": <name as the client library names it>, "id", "data"}.
httpx-sse, like EventSource, names an event without an `event:` line
`message`. Stops after a stream's end frame (revoked, expired, gap,
shutdown, closed) and checks that the server then ends the stream.

usage: sse_events.py BASE_URL APIKEY MODE
"""
import json
import sys

import httpx
from httpx_sse import connect_sse

END_FRAMES = {"revoked", "expired", "gap", "shutdown", "closed"}


def main():
    base, apikey, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    params = {"apikey": apikey, "from": "1", "mode": mode}
    with httpx.Client(timeout=httpx.Timeout(120.0)) as client:
        with connect_sse(client, "GET", f"{base}/v1/events/subscribe", params=params) as source:
            if source.response.status_code != 200:
                raise SystemExit(f"status {source.response.status_code}: {source.response.read()!r}")
            events = source.iter_sse()
            for sse in events:
                if not sse.data:
                    # A comment or the retry hint: a browser dispatches
                    # nothing for a block without data.
                    continue
                if sse.event == "error":
                    raise SystemExit(f"an `error` event, which a browser takes for a failed connection: {sse.data}")
                print(json.dumps({"event": sse.event, "id": sse.id, "data": sse.data}), flush=True)
                if sse.event in END_FRAMES:
                    break
            else:
                raise SystemExit("the stream ended without an end frame")
            rest = [sse for sse in events if sse.data]
            if rest:
                raise SystemExit(f"events after the end frame: {rest!r}")


if __name__ == "__main__":
    main()

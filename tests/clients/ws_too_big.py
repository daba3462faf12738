"""Sends Sluice's WebSocket endpoint a frame beyond 16 × ws.max_message_bytes
with the `websockets` package (PyPI) and reports the close code it got.

Usage: ws_too_big.py WS_URL [API_KEY] FRAME_BYTES

Without a key the frame goes before authentication; with one, after the
server's auth_ok. Prints `CLOSED <code> <reason>` for the close frame the
server sent (`CLOSED none` when the connection dropped without one, which a
browser reports as 1006), then exits 0.
"""

import asyncio
import json
import sys

import websockets


async def main(url, key, size):
    if key:
        url = f"{url}?apikey={key}"
    async with websockets.connect(url, close_timeout=5) as ws:
        if key:
            ok = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if ok.get("type") != "auth_ok":
                print(f"FAIL expected auth_ok, got {ok}", flush=True)
                sys.exit(1)
        head = '{"type":"ping","pad":"'
        frame = head + "x" * (size - len(head) - 2) + '"}'
        try:
            await ws.send(frame)
            m = await asyncio.wait_for(ws.recv(), 60)
            print(f"FAIL expected a close, got {m[:200]}", flush=True)
            sys.exit(1)
        except websockets.ConnectionClosed as e:
            if e.rcvd is None:
                print("CLOSED none", flush=True)
            else:
                print(f"CLOSED {e.rcvd.code} {e.rcvd.reason}", flush=True)


args = sys.argv[1:]
if len(args) == 2:
    asyncio.run(main(args[0], None, int(args[1])))
else:
    asyncio.run(main(args[0], args[1], int(args[2])))

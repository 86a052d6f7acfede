"""A minimal faust-streaming worker for the compatibility test: upper-cases N messages, then stops itself.

Run as `python faust_echo_app.py worker`, with SQ_FAUST_BROKER, SQ_FAUST_ID, SQ_FAUST_IN, SQ_FAUST_OUT and
SQ_FAUST_COUNT in the environment (a test helper, so it reads them directly).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import faust

app = faust.App(os.environ["SQ_FAUST_ID"], broker=f"kafka://{os.environ['SQ_FAUST_BROKER']}", store="memory://",
                web_enabled=False, topic_replication_factor=1)
source = app.topic(os.environ["SQ_FAUST_IN"], value_serializer="raw")
sink = app.topic(os.environ["SQ_FAUST_OUT"], value_serializer="raw")
want = int(os.environ["SQ_FAUST_COUNT"])
seen: list[bytes] = []


@app.agent(source)
async def echo(stream: Any) -> None:
    async for value in stream:
        await sink.send(value=value.upper())
        seen.append(value)
        if len(seen) == want:
            os.kill(os.getpid(), signal.SIGTERM)  # faust flushes its producer as it shuts down


if __name__ == "__main__":
    app.main()

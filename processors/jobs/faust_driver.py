"""Faust's aiokafka transport with two corrections for exactly-once mode.

1. Recovery reads the changelog's end from the broker.

In exactly-once mode Faust asks the consumer for each changelog partition's end through
`last_stable_offset`, which aiokafka only knows from an earlier fetch response of that partition. Right after
an assignment there has been none: every end reads as unknown, recovery concludes the changelog is empty and
the table starts empty (measured: a plane killed while jobs ran restarted without their records and never ran
them again, in about one restart of three). Here the end is asked of the broker instead: `end_offsets` of a
read_committed consumer is a ListOffsets request at that isolation level, which returns the last stable
offset.

2. A failed final commit no longer keeps the process alive. At shutdown Faust commits once more with
`start_new_transaction=False`; when a transactional producer has no open transaction then, aiokafka raises
IllegalOperation, the consumer's stop ends there, its thread is never stopped, and the process hangs after
"Closing event loop" until it is killed (measured: 60 s in the restart test, every other run). The final
commit is best effort anyway: whatever it would have committed is read again by the next owner, whose
transactions make that exactly-once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiokafka.errors import IllegalOperation
from faust.transport.drivers import aiokafka as driver
from faust.types import TP


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        ends: Mapping[TP, int] = await self._ensure_consumer().end_offsets(partitions)
        return ends


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def commit_and_end_transactions(self) -> None:
        try:
            await super().commit_and_end_transactions()
        except IllegalOperation as err:
            self.log.warning("final commit at shutdown skipped (%s): the next owner reads those messages again",
                             err)


class Transport(driver.Transport):
    Consumer = _Consumer

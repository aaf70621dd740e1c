"""Writes held until the end of the event-loop iteration (gateway.corking): one write per
connection, every connection of a loop flushed by one callback, the order kept through close,
and the bounds on what is held."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any

from support.recording_transport import RecordingTransport

from gateway.corking import CorkedTransport, _batches, write_batch


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 5))


def corked_transport() -> tuple[RecordingTransport, CorkedTransport]:
    transport = RecordingTransport()
    return transport, CorkedTransport(transport, asyncio.get_running_loop())


def test_the_connections_of_a_loop_are_flushed_by_one_callback() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pairs = [corked_transport() for _ in range(3)]
        for n, (_, corked) in enumerate(pairs):
            corked.write(b"reply %d" % n)
        batch = write_batch(loop)
        assert [p[1] for p in pairs] == batch.pending and batch.scheduled
        await asyncio.sleep(0)
        assert [t.written for t, _ in pairs] == [[b"reply 0"], [b"reply 1"], [b"reply 2"]]
        assert batch.pending == [] and not batch.scheduled

    run(main())


def test_close_sends_what_is_held_first() -> None:
    async def main() -> None:
        transport, corked = corked_transport()
        corked.write(b"last response")
        corked.close()
        assert transport.written == [b"last response"] and transport.closing
        corked.write(b"too late")
        await asyncio.sleep(0)
        assert transport.written == [b"last response"]  # nothing after the close

    run(main())


def test_large_pieces_are_not_joined_and_too_much_held_leaves_at_once() -> None:
    async def main() -> None:
        transport, corked = corked_transport()
        big = b"x" * CorkedTransport.JOIN_BYTES
        corked.write(b"head")
        corked.write(big)
        await asyncio.sleep(0)
        assert transport.written == [b"head", big]  # writelines: no copy to glue them
        chunk = b"y" * (CorkedTransport.FLUSH_BYTES // 4)
        for _ in range(3):
            corked.write(chunk)
        assert len(transport.written) == 2  # still held
        corked.write(chunk)
        assert transport.written[2:] == [chunk] * 4  # the bound: written without waiting

    run(main())


def test_a_closing_transport_gets_nothing_more() -> None:
    async def main() -> None:
        transport, corked = corked_transport()
        corked.write(b"held")
        transport.close()  # closed under us (an error, a reset) before the flush
        await asyncio.sleep(0)
        assert transport.written == []

    run(main())


def test_a_loop_that_is_gone_leaves_no_batch_behind() -> None:
    async def main() -> None:
        corked_transport()[1].write(b"x")

    before = len(_batches)
    for _ in range(3):
        run(main())
    gc.collect()
    assert len(_batches) <= before


class FailingTransport(RecordingTransport):
    def write(self, data: bytes | bytearray | memoryview) -> None:
        raise RuntimeError("the TLS layer is broken")

    def abort(self) -> None:
        self.closing = True


def test_one_failing_connection_does_not_strand_the_others_bytes() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        broken = FailingTransport()
        first, after = corked_transport(), corked_transport()
        first[1].write(b"before")
        CorkedTransport(broken, loop).write(b"lost")
        after[1].write(b"after")
        await asyncio.sleep(0)
        assert (first[0].written, after[0].written) == ([b"before"], [b"after"])
        assert broken.closing  # aborted: its response cannot be whole

    run(main())

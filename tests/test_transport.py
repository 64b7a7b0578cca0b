"""BrokerLink's send path against the real local broker.

A publish made while the link's I/O thread waits for the network is written
on the caller's thread (it joins the loop under the loop's lock); otherwise it
is queued for the I/O thread. These tests drive both at once, from several
threads, with deliveries and confirms flowing on the same connection.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from miros_rabbitmq.config import load_settings
from miros_rabbitmq.testing import wait_for
from miros_rabbitmq.transport import BrokerAddress, BrokerLink, Consumer, parse_peer


@pytest.fixture
def address(rabbitmq_url: str, mesh_env: dict[str, str]) -> BrokerAddress:
    return parse_peer(rabbitmq_url, load_settings())


@pytest.fixture
def link(address: BrokerAddress) -> Iterator[BrokerLink]:
    link = BrokerLink(address, max_buffer=100_000)
    assert link.connected.wait(10), link.last_error
    yield link
    link.close(flush_timeout=5)


class Inbox:
    """What a consumer received, as a list, under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bodies: list[bytes] = []

    def take(self, body: bytes) -> bool:
        with self.lock:
            self.bodies.append(body)
        return True

    def count(self) -> int:
        with self.lock:
            return len(self.bodies)


def consume(link: BrokerLink, exchange: str, key: str, inbox: Inbox) -> Consumer:
    consumer = Consumer(exchange=exchange, routing_keys=[key], on_message=inbox.take,
                        queue=f"test.transport.{uuid.uuid4().hex[:8]}")
    link.declare_exchange(exchange)
    link.add_consumer(consumer)
    assert consumer.ready.wait(10)
    return consumer


def test_threads_publishing_at_once_lose_nothing_and_keep_their_order(link) -> None:
    exchange = f"test.transport.{uuid.uuid4().hex[:6]}"
    inbox = Inbox()
    consumer = consume(link, exchange, "t.#", inbox)
    per_thread, threads = 3000, 4

    def publish(index: int) -> None:
        for seq in range(per_thread):
            assert link.publish(exchange, "t.x", b"%d:%d" % (index, seq))
            if seq % 500 == 0:
                time.sleep(0.001)  # let the loop go idle: the next one goes out directly

    workers = [threading.Thread(target=publish, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert wait_for(lambda: inbox.count() == per_thread * threads, timeout=30), inbox.count()
    assert link.flush(10)
    seen: dict[int, list[int]] = {}
    for body in inbox.bodies:
        index, seq = body.split(b":")
        seen.setdefault(int(index), []).append(int(seq))
    assert {index: len(seqs) for index, seqs in seen.items()} == {i: per_thread for i in range(threads)}
    for seqs in seen.values():
        assert seqs == sorted(seqs)  # each thread's messages in the order it sent them
    assert link.stats.confirmed == per_thread * threads and link.stats.nacked == 0
    link.remove_consumer(consumer)


def test_single_publish_on_an_idle_link_goes_out_without_the_io_thread(link) -> None:
    exchange = f"test.transport.{uuid.uuid4().hex[:6]}"
    inbox = Inbox()
    consumer = consume(link, exchange, "one", inbox)
    assert link.flush(5)
    loop = link._ioloop  # it holds its lock whenever it runs, not while it waits
    wait_for(lambda: loop._poller.may_join() and not loop.lock.locked(), timeout=5,
             message="the I/O loop back in its wait for the network")
    before = link.stats
    assert link.publish(exchange, "one", b"direct")
    assert wait_for(lambda: inbox.count() == 1, timeout=5)
    assert inbox.bodies == [b"direct"]
    after = link.stats
    assert after.direct - before.direct == 1  # written on this thread, not the I/O thread's
    # and not through pika's write buffer: straight to the socket
    assert after.buffered_writes == before.buffered_writes
    link.remove_consumer(consumer)


def test_a_message_larger_than_the_socket_takes_keeps_its_place(link) -> None:
    exchange = f"test.transport.{uuid.uuid4().hex[:6]}"
    inbox = Inbox()
    consumer = consume(link, exchange, "big", inbox)
    big = bytes(range(256)) * (16 * 1024)  # 4 MiB: the socket takes a part, pika the rest
    bodies = [b"before", big, b"after-1", b"after-2"]
    for body in bodies:
        assert link.publish(exchange, "big", body)
    assert wait_for(lambda: inbox.count() == len(bodies), timeout=30), inbox.count()
    assert inbox.bodies == bodies
    assert link.flush(10)
    link.remove_consumer(consumer)


def test_publish_from_the_io_thread_is_queued_not_deadlocked(link) -> None:
    exchange = f"test.transport.{uuid.uuid4().hex[:6]}"
    inbox = Inbox()
    echoes = consume(link, exchange, "echo", inbox)

    def bounce(body: bytes) -> bool:  # runs on the link's I/O thread, which holds the lock
        return link.publish(exchange, "echo", b"echo:" + body)

    source = Consumer(exchange=exchange, routing_keys=["ping"], on_message=bounce,
                      queue=f"test.transport.{uuid.uuid4().hex[:8]}")
    link.add_consumer(source)
    assert source.ready.wait(10)
    for seq in range(50):
        link.publish(exchange, "ping", b"%d" % seq)
    assert wait_for(lambda: inbox.count() == 50, timeout=10), inbox.count()
    assert inbox.bodies == [b"echo:%d" % seq for seq in range(50)]
    link.remove_consumer(source)
    link.remove_consumer(echoes)


GLUE_OFF_SCRIPT = """
import sys, threading, uuid
from miros_rabbitmq.config import load_settings
from miros_rabbitmq.transport import BrokerLink, Consumer, parse_peer
from miros_rabbitmq.transport import _pika_glue

assert not _pika_glue.GLUE_ENABLED
link = BrokerLink(parse_peer(sys.argv[1], load_settings()))
assert link.connected.wait(10), link.last_error
got, done = [], threading.Event()
def take(body):
    got.append(body)
    if len(got) == 2000:
        done.set()
    return True
exchange = "test.transport.glue." + uuid.uuid4().hex[:6]
consumer = Consumer(exchange=exchange, routing_keys=["g"], on_message=take,
                    queue="test.transport.glue." + uuid.uuid4().hex[:8])
link.declare_exchange(exchange)
link.add_consumer(consumer)
assert consumer.ready.wait(10)
for n in range(2000):
    assert link.wait_for_room(30) and link.publish(exchange, "g", b"%d" % n)
assert done.wait(30), len(got)
assert got == [b"%d" % n for n in range(2000)]
assert link.stats.direct == 0
link.remove_consumer(consumer)
link.close(flush_timeout=5)
print("STOCK PATH OK", flush=True)
"""


def test_the_stock_pika_path_works_when_the_glue_is_off(rabbitmq_url, mesh_env, tmp_path) -> None:
    import os
    import subprocess
    import sys

    script = tmp_path / "glue_off.py"
    script.write_text(GLUE_OFF_SCRIPT)
    done = subprocess.run([sys.executable, str(script), rabbitmq_url], capture_output=True,
                          text=True, timeout=90,
                          env={**os.environ, "MIROS_RABBITMQ_PIKA_GLUE": "0"})
    assert "STOCK PATH OK" in done.stdout, done.stderr[-3000:]

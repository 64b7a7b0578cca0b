"""``miros-rabbitmq send SIGNAL [PAYLOAD_JSON] --tx KEY``: inject one event into the mesh.

As ``ros2 topic pub`` or ``nameko shell`` let people poke a running system:
the event reaches every chart whose ``rx_routing_key`` matches ``--tx``, on
the local broker and on the brokers given with ``--peer``, exactly as if a
chart had transmitted it. The command waits until each broker confirmed it.
"""

from __future__ import annotations

import json
import time
import uuid

import click

from miros_rabbitmq.cli._common import EXIT_UNUSABLE, Context, check_keys, fail, load


@click.command()
@click.argument("signal_name", metavar="SIGNAL")
@click.argument("payload_json", metavar="[PAYLOAD_JSON]", required=False)
@click.option("--tx", "tx_routing_key", required=True, metavar="KEY",
              help="The routing key to send with (a chart's tx_routing_key).")
@click.option("--peer", "peers", multiple=True, metavar="HOST",
              help="Also send to this peer broker (host, host:port, amqp:// URL; repeatable).")
@click.option("--serializer", type=click.Choice(["pickle", "json"]), default="pickle",
              show_default=True, help="The serializer the receiving charts use.")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(0.1, 120),
              help="Seconds to wait for the brokers to confirm.")
@click.pass_obj
def send(ctx: Context, signal_name: str, payload_json: str | None, tx_routing_key: str,
         peers: tuple[str, ...], serializer: str, timeout: float) -> None:
    """Send SIGNAL with PAYLOAD_JSON (JSON text; default: no payload) into the mesh.

    Example: miros-rabbitmq send other_hello '{"from": "shell"}' --tx heya.man
    """
    from miros_rabbitmq.mesh.nets import MirosNets
    from miros_rabbitmq.mesh.networked import check_routing_key
    from miros_rabbitmq.wire.codec import JSON, PICKLE

    if not signal_name.isidentifier():
        fail(f"SIGNAL must be a name like other_hello, not {signal_name!r}", EXIT_UNUSABLE)
    try:
        payload = json.loads(payload_json) if payload_json is not None else None
    except ValueError as error:
        fail(f"PAYLOAD_JSON is not JSON ({error}); quote strings: '\"text\"'", EXIT_UNUSABLE)
    settings = load(ctx)
    check_keys(settings)
    try:
        check_routing_key(tx_routing_key, "--tx")
    except Exception as error:  # ConfigurationError: a key is never put on the wire
        fail(str(error), EXIT_UNUSABLE)
    nets = MirosNets(name=f"miros-rabbitmq-send-{uuid.uuid4().hex[:8]}", settings=settings,
                     tx_routing_key=tx_routing_key,
                     rx_routing_key=f"miros-rabbitmq.send.{uuid.uuid4().hex}",  # hears nothing
                     deliver=lambda envelope: True, peers=peers,
                     serializer=JSON if serializer == "json" else PICKLE)
    try:
        try:
            nets.start(timeout=timeout)
        except Exception as error:
            fail(str(error))
        links = nets.links()
        deadline = time.monotonic() + timeout
        down = [link.address.url for link in links
                if not link.connected.wait(max(0.0, deadline - time.monotonic()))]
        if down:
            fail(f"not connected within {timeout:g} s: {', '.join(down)}")
        try:
            nets.transmit(signal_name, payload)
        except Exception as error:
            fail(str(error), EXIT_UNUSABLE)
        unconfirmed = [link.address.url for link in links
                       if not link.flush(max(0.1, deadline - time.monotonic()))]
        if unconfirmed:
            fail(f"not confirmed within {timeout:g} s by {', '.join(unconfirmed)}")
    finally:
        nets.stop(flush_timeout=0)
    click.echo(f"sent {signal_name} ({tx_routing_key}) to {len(links)} broker(s)", err=True)


command = send

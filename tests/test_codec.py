"""The envelope: encryption, authentication, drop reasons, hostile input (fuzzed)."""

from __future__ import annotations

import pickle
import time
from dataclasses import replace

import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from miros import Event, signals

from miros_rabbitmq.config import Secret, load_settings
from miros_rabbitmq.errors import ConfigurationError, DecodeError, SerializationError
from miros_rabbitmq.mesh.nets import MirosNets
from miros_rabbitmq.wire.codec import JSON, PICKLE, Codec, Envelope, make_event, signal_number
from miros_rabbitmq.wire.names import Network
from miros_rabbitmq.wire.replay import ReplayGuard

KEY = Fernet.generate_key()
OTHER = Fernet.generate_key()


def envelope(payload: object = None, seq: int = 1) -> Envelope:
    return Envelope("mesh_hello", payload, "sender.abc", seq, "10.0.0.1:5672")


def test_round_trip_keeps_everything() -> None:
    codec = Codec([KEY])
    original = envelope({"x": [1, 2.5, "three"]}, seq=42)
    assert codec.decode(codec.encode(original)) == original


def test_miros_events_travel_by_signal_name() -> None:
    codec = Codec([KEY])
    inner = Event(signal=signals.some_inner_signal, payload={"a": 1})
    decoded = codec.decode(codec.encode(envelope([inner])))
    event = decoded.payload[0]
    assert event.signal_name == "some_inner_signal" and event.payload == {"a": 1}
    with pytest.raises(TypeError):  # plain pickle still cannot: we did not patch miros
        pickle.loads(pickle.dumps(inner))


@pytest.mark.parametrize("name", ["mesh_known", "mesh_brand_new_signal", "ENTRY_SIGNAL"])
def test_make_event_is_what_miros_builds(name: str) -> None:
    ours = make_event(name, {"p": 1})
    theirs = Event(signal=name, payload={"p": 1})
    assert type(ours) is type(theirs)
    assert vars(ours) == vars(theirs)  # signal, signal_name, payload
    assert ours.signal == signals[name] and ours.has_payload()


@pytest.mark.parametrize("name", ["keys", "append", "items", "__class__", "name with spaces"])
def test_any_signal_name_from_the_network_gets_a_number(name: str) -> None:
    # a name that is also a dict method or dunder must not break the receive path
    number = signal_number(name)
    assert isinstance(number, int) and signals[name] == number
    assert make_event(name, None).signal_name == name


@pytest.mark.parametrize("token, reason", [
    (b"", "garbage"),
    (b"not a token at all", "garbage"),
    (b"\x00\x01\x02" * 40, "garbage"),
])
def test_garbage_reasons(token: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as raised:
        Codec([KEY]).decode(token)
    assert raised.value.reason == reason


def test_another_key_is_bad_key() -> None:
    token = Codec([OTHER]).encode(envelope("x"))
    with pytest.raises(DecodeError) as raised:
        Codec([KEY]).decode(token)
    assert raised.value.reason == "bad_key"


def test_tampered_token_is_refused() -> None:
    token = bytearray(Codec([KEY]).encode(envelope("x")))
    token[60] = ord("A") if token[60] != ord("A") else ord("B")
    with pytest.raises(DecodeError) as raised:
        Codec([KEY]).decode(bytes(token))
    assert raised.value.reason in ("bad_key", "garbage")


def _restamped(token: bytes, when: float) -> bytes:
    """The same plaintext, as if encrypted at ``when`` (what a skewed sender makes)."""
    fernet = Fernet(KEY)
    return fernet.encrypt_at_time(fernet.decrypt(token), int(when))


def test_age_limit_is_ours_not_fernets() -> None:
    now = time.time()
    token = Codec([KEY]).encode(envelope("x"))
    # hours late, or minutes in the future (clock skew): Fernet's TTL would refuse both
    for when in (now - 5 * 3600, now + 300, now - 300):
        assert Codec([KEY]).decode(_restamped(token, when)).payload == "x"
    with pytest.raises(DecodeError) as raised:  # beyond the 6 h default, either way
        Codec([KEY]).decode(_restamped(token, now - 7 * 3600))
    assert raised.value.reason == "expired"
    with pytest.raises(DecodeError) as raised:
        Codec([KEY]).decode(_restamped(token, now + 7 * 3600))
    assert raised.value.reason == "expired"
    assert Codec([KEY], max_age=None).decode(_restamped(token, now - 7 * 3600)).payload == "x"
    assert Codec([KEY], ttl=60).max_age == 60  # the 0.3.0 keyword


def test_clock_is_injectable_and_stamps_the_token() -> None:
    later = time.time() + 10 * 3600
    sender = Codec([KEY], clock=lambda: later)
    decoded = Codec([KEY], clock=lambda: later + 1).decode(sender.encode(envelope("x")))
    assert abs(decoded.sent_at - later) < 1.5
    with pytest.raises(DecodeError) as raised:  # a receiver with the real clock: 10 h apart
        Codec([KEY]).decode(sender.encode(envelope("x")))
    assert raised.value.reason == "expired"


def test_tokens_are_bound_to_their_network_and_routing_key() -> None:
    snoop = Codec([KEY], network=Network.SNOOP_TRACE)
    mesh = Codec([KEY])
    token = snoop.encode(Envelope("SNOOP_TRACE", [], "s", 1, epoch=7, routing_key="snoop.trace"))
    with pytest.raises(DecodeError) as raised:  # same key, another network
        mesh.decode(token)
    assert raised.value.reason == "wrong_network"
    token = mesh.encode(Envelope("hi", 1, "s", 1, epoch=7, routing_key="a.b"))
    assert mesh.decode(token, routing_key="a.b").routing_key == "a.b"
    assert mesh.decode(token).payload == 1  # no key to compare with (a direct reply)
    with pytest.raises(DecodeError) as raised:
        mesh.decode(token, routing_key="a.c")
    assert raised.value.reason == "wrong_route"


def test_a_0_2_message_is_recognised() -> None:
    old = Fernet(KEY).encrypt(b'{"signal_name": "mesh_hello", "payload": {"a": 1}}')
    with pytest.raises(DecodeError) as raised:
        Codec([KEY]).decode(old)
    assert raised.value.reason == "v0.2"


def test_replay_guard_accepts_each_sequence_number_once() -> None:
    guard = ReplayGuard(window=8, max_senders=2)
    for seq in (1, 2, 5, 3):  # out of order within the window: accepted once each
        assert not guard.seen("a", 9, seq)
        guard.accept("a", 9, seq)
    assert all(guard.seen("a", 9, seq) for seq in (1, 2, 3, 5))
    assert not guard.seen("a", 9, 4) and not guard.seen("a", 10, 1)  # another epoch
    guard.accept("a", 9, 100)
    assert guard.seen("a", 9, 92) and not guard.seen("a", 9, 93)  # below the window: refused
    guard.accept("b", 1, 1)
    guard.accept("c", 1, 1)  # bounded: the least recently heard sender is forgotten
    assert len(guard) == 2 and not guard.seen("a", 9, 100)


def test_replay_guard_logs_skew_once_per_sender(caplog) -> None:
    guard = ReplayGuard(owner="me")
    with caplog.at_level("WARNING"):
        for _ in range(3):
            guard.note_clock("fast", 1300.0, 1000.0)
        guard.note_clock("fine", 1001.0, 1000.0)
    lines = [r for r in caplog.records if "stamped" in r.getMessage()]
    assert len(lines) == 1 and "+300.0 s" in lines[0].getMessage()


def test_too_large_is_refused_before_decrypting() -> None:
    codec = Codec([KEY], max_message_bytes=1000)
    with pytest.raises(DecodeError) as raised:
        codec.decode(Codec([KEY]).encode(envelope("y" * 5000)))
    assert raised.value.reason == "too_large"
    with pytest.raises(SerializationError, match="max_message_bytes"):  # and on sending
        codec.encode(envelope("y" * 5000))


def test_key_rotation_first_encrypts_all_decrypt() -> None:
    old_only = Codec([OTHER])
    rotating = Codec([KEY, OTHER])
    assert rotating.decode(old_only.encode(envelope("from old"))).payload == "from old"
    new_token = rotating.encode(envelope("from new"))
    assert Codec([KEY]).decode(new_token).payload == "from new"
    with pytest.raises(DecodeError):
        old_only.decode(new_token)
    old_only.set_keys([OTHER, KEY])  # rotated at run time
    assert old_only.decode(new_token).payload == "from new"


def test_json_serializer_refuses_objects_and_never_unpickles() -> None:
    codec = Codec([KEY], serializer=JSON)
    assert codec.decode(codec.encode(envelope({"a": [1, None]}))).payload == {"a": [1, None]}
    with pytest.raises(SerializationError, match="json cannot serialize"):
        codec.encode(envelope(object()))
    pickled = Codec([KEY], serializer=PICKLE).encode(envelope({"a": 1}))
    with pytest.raises(DecodeError) as raised:
        codec.decode(pickled)  # authentic, but not JSON: refused, not executed
    assert raised.value.reason == "deserialize"


def test_bad_keys_are_configuration_errors_without_the_key() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Codec([Secret("definitely-not-fernet")])
    assert "definitely-not-fernet" not in str(raised.value)
    shown = repr(Codec([KEY])) + str(Codec([KEY]))
    secret = KEY.decode()
    # not the key, nor any 8 characters of it
    assert not [secret[i:i + 8] for i in range(len(secret) - 7) if secret[i:i + 8] in shown]


def test_comma_separated_env_keys_rotate(monkeypatch) -> None:
    monkeypatch.setenv("RABBIT_USER", "u")
    monkeypatch.setenv("RABBIT_PASSWORD", "p")
    monkeypatch.setenv("MESH_ENCRYPTION_KEY", f"{KEY.decode()},{OTHER.decode()}")
    settings_ = load_settings(dotenv_path="/nonexistent/.env")
    assert [k.reveal() for k in settings_.mesh_keys] == [KEY.decode(), OTHER.decode()]


# ------------------------------------------------------------------ fuzzing the receive path


class _Sink:
    def __init__(self) -> None:
        self.delivered: list[Envelope] = []

    def __call__(self, env: Envelope) -> bool:
        self.delivered.append(env)
        return True


def _receiver() -> tuple[MirosNets, _Sink]:
    sink = _Sink()
    settings_ = load_settings(rabbit_user="u", rabbit_password="p", mesh_encryption_key=KEY,
                              dotenv_path="/nonexistent/.env")
    return MirosNets(name="fuzz", settings=settings_, tx_routing_key="a", rx_routing_key="b",
                     deliver=sink), sink


GENUINE = Envelope("mesh_hello", {"valid": True}, "sender.abc", 1, "10.0.0.1:5672",
                   "other.node:4", epoch=77, routing_key="a.b")


def _header_end() -> int:
    return 2 + 1 + 8 + 8 + 10 + sum(len(text) for text in (
        GENUINE.signal_name, GENUINE.sender, GENUINE.origin, GENUINE.causation,
        GENUINE.routing_key))


@st.composite
def _hostile(draw: st.DrawFn) -> tuple[bytes, str]:
    """A body and the routing key it arrives under, built from a genuine token: forgeries
    (no key), and authentic tokens that must still be refused (another network, another
    routing key, too old, an old format, no epoch)."""
    valid = Codec([KEY]).encode(GENUINE)
    fernet = Fernet(KEY)
    plain = fernet.decrypt(valid)
    body = draw(st.one_of(
        st.binary(max_size=2048),
        st.builds(lambda cut: valid[:cut], st.integers(0, len(valid))),
        st.builds(lambda i, b: valid[:i] + bytes([b]) + valid[i + 1:],
                  st.integers(0, len(valid) - 1), st.integers(0, 255)),
        st.builds(lambda junk: valid + junk, st.binary(min_size=1, max_size=64)),
        st.builds(lambda network: Codec([KEY], network=network).encode(GENUINE),
                  st.sampled_from([Network.SNOOP_TRACE, Network.SNOOP_SPY, Network.SCOUT])),
        st.builds(lambda age: fernet.encrypt_at_time(plain, int(time.time() - age)),
                  st.integers(6 * 3600 + 60, 10**9)),
        st.just(fernet.encrypt(b'{"signal_name": "mesh_hello", "payload": 1}')),  # 0.2
        st.just(fernet.encrypt(b"M2" + plain[2:])),  # 0.3 development builds
        st.just(Codec([KEY]).encode(replace(GENUINE, epoch=0))),  # a scout message
    ))
    key = draw(st.sampled_from(["a.b", "a.c", "", "a.b.c"]))
    return body, key


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_hostile(), min_size=1, max_size=4))
def test_fuzzed_bytes_never_raise_and_deliver_only_the_genuine_message_once(
        deliveries: list[tuple[bytes, str]]) -> None:
    nets, sink = _receiver()
    genuine = Codec([KEY]).encode(GENUINE)
    for body, key in [*deliveries, (genuine, "a.b"), (genuine, "a.b")]:
        assert nets._on_mesh_message(body, key) is True  # always acked: nothing escapes
    # only the genuine message gets through, unchanged and exactly once (base64 decoding
    # skips stray bytes, so a token plus junk can still carry the genuine content)
    assert sink.delivered == [GENUINE]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_authentic_tokens_with_mangled_headers_never_raise(data: st.DataObject) -> None:
    # a key holder with a broken (or hostile) encoder: refused or delivered, never a crash
    fernet = Fernet(KEY)
    plain = fernet.decrypt(Codec([KEY]).encode(GENUINE))
    index = data.draw(st.integers(0, _header_end() - 1))
    mangled = data.draw(st.one_of(
        st.builds(lambda b: plain[:index] + bytes([b]) + plain[index + 1:], st.integers(0, 255)),
        st.just(plain[:index]),
        st.builds(lambda junk: plain[:index] + junk, st.binary(max_size=32)),
    ))
    nets, sink = _receiver()
    assert nets._on_mesh_message(fernet.encrypt(mangled), "a.b") is True
    assert all(isinstance(env, Envelope) for env in sink.delivered)


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20))
def test_any_plain_payload_round_trips_on_both_serializers(payload: object) -> None:
    for serializer in (PICKLE, JSON):
        codec = Codec([KEY], serializer=serializer)
        assert codec.decode(codec.encode(envelope(payload))).payload == payload


def test_a_parked_delivery_is_decrypted_once_and_size_is_checked_first() -> None:
    room = [False]
    delivered: list[Envelope] = []

    def deliver(env: Envelope) -> bool:
        if not room[0]:
            return False
        delivered.append(env)
        return True

    settings_ = load_settings(rabbit_user="u", rabbit_password="p", mesh_encryption_key=KEY,
                              dotenv_path="/nonexistent/.env")
    nets = MirosNets(name="parked", settings=settings_, tx_routing_key="a", rx_routing_key="b",
                     deliver=deliver, max_message_bytes=2000)
    codec = nets.networks["mesh"].codec
    calls: list[bytes] = []
    real_decode = codec.decode

    def counting_decode(token: bytes, **kwargs: object) -> Envelope:
        calls.append(token)
        return real_decode(token, **kwargs)  # type: ignore[arg-type]

    codec.decode = counting_decode  # type: ignore[method-assign]
    body = Codec([KEY]).encode(GENUINE)
    assert nets._on_mesh_message(body, "a.b") is False  # no room: parked
    room[0] = True
    assert nets._on_mesh_message(body, "a.b") is True  # resumed: not decrypted again
    assert delivered == [GENUINE] and len(calls) == 1
    assert nets._on_mesh_message(b"x" * 2001, "a.b") is True
    assert len(calls) == 1 and nets.drops.counts["mesh.too_large"] == 1


def test_every_token_has_its_own_iv_in_a_forked_child_too() -> None:
    """IVs come from a pool drawn 256 at a time; a forked child must not reuse the parent's."""
    import base64
    import os

    codec = Codec([KEY])

    def ivs(count: int) -> list[bytes]:
        return [base64.urlsafe_b64decode(codec.encode(envelope(n)))[9:25] for n in range(count)]

    first = ivs(10)  # the pool now holds IVs the parent has not used yet
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(reader)
            os.write(writer, b"".join(ivs(10)))
        finally:
            os._exit(0)
    os.close(writer)
    data = b""
    while chunk := os.read(reader, 4096):
        data += chunk
    os.close(reader)
    os.waitpid(pid, 0)
    child = [data[i:i + 16] for i in range(0, len(data), 16)]
    later = ivs(300)  # past one draw of the pool
    assert len(child) == 10
    every = first + child + later
    assert len(set(every)) == len(every)
    assert Codec([KEY]).decode(codec.encode(envelope("x"))).payload == "x"

"""The envelope: encryption, authentication, drop reasons, hostile input (fuzzed)."""

from __future__ import annotations

import pickle
import time

import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from miros import Event, signals

from miros_rabbitmq.config import Secret, load_settings
from miros_rabbitmq.errors import ConfigurationError, DecodeError, SerializationError
from miros_rabbitmq.mesh.nets import MirosNets
from miros_rabbitmq.wire.codec import JSON, PICKLE, Codec, Envelope, make_event, signal_number

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


def test_replay_older_than_ttl_is_expired() -> None:
    fernet = Fernet(KEY)
    old = Codec([KEY]).encode(envelope("x"))
    plaintext = fernet.decrypt(old)
    replayed = fernet.encrypt_at_time(plaintext, int(time.time()) - 120)
    with pytest.raises(DecodeError) as raised:
        Codec([KEY], ttl=60).decode(replayed)
    assert raised.value.reason == "expired"
    assert Codec([KEY], ttl=None).decode(replayed).payload == "x"


def test_too_large_is_refused_before_decrypting() -> None:
    codec = Codec([KEY], max_message_bytes=1000)
    with pytest.raises(DecodeError) as raised:
        codec.decode(Codec([KEY]).encode(envelope("y" * 5000)))
    assert raised.value.reason == "too_large"


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
                     deliver=sink, ttl=60), sink


VALID = Codec([KEY]).encode(envelope({"valid": True}, seq=1))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda cut: VALID[:cut], st.integers(0, len(VALID))),
    st.builds(lambda i, b: VALID[:i] + bytes([b]) + VALID[i + 1:],
              st.integers(0, len(VALID) - 1), st.integers(0, 255)),
    st.builds(lambda junk: VALID + junk, st.binary(min_size=1, max_size=64)),
))
def test_fuzzed_bytes_never_raise_and_never_deliver_forgeries(body: bytes) -> None:
    nets, sink = _receiver()
    assert nets._on_mesh_message(body) is True  # always acked: nothing escapes
    for delivered in sink.delivered:
        # only the authentic message may get through, unchanged (base64 decoding
        # skips stray bytes, so VALID plus junk can still carry VALID's content)
        assert delivered == envelope({"valid": True}, seq=1)


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20))
def test_any_plain_payload_round_trips_on_both_serializers(payload: object) -> None:
    for serializer in (PICKLE, JSON):
        codec = Codec([KEY], serializer=serializer)
        assert codec.decode(codec.encode(envelope(payload))).payload == payload

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import subprocess
import sys
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, NamedTuple

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from substantial import codec as codec_module
from substantial._json_tags import ENCODABLE
from substantial.codec import (
    DEFAULT_CODEC,
    JSONCodec,
    decode_payload,
    encode_payload,
    get_codec,
    register_codec,
    register_type,
)
from substantial.errors import CodecError
from substantial.protocol import substantial_pb2 as pb


class Color(enum.Enum):
    RED = "red"
    PAIR = (1, 2)


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.Flag):
    R = 1
    W = 2


@dataclasses.dataclass
class Box:
    item: Any
    label: str = "box"


@dataclasses.dataclass(frozen=True)
class Frozen:
    x: int
    derived: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "derived", self.x * 2)


class Point(NamedTuple):
    x: Any
    y: Any


class AnyModel(pydantic.BaseModel):
    value: Any


class Order(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")

    id: uuid.UUID
    placed: dt.datetime
    lines: tuple[int, ...]
    box: Box | None = None
    total: Decimal = pydantic.Field(alias="Total")


class NotAClass:
    pass


class Unlisted(enum.Enum):
    """Never registered, named in no annotation: the codec must not rebuild it."""

    ONE = 1


# The codec rebuilds only allowed classes. These tests hand the classes to the codec
# directly, not through a workflow's annotations, so they register them.
for _cls in (Color, Level, Perm, Box, Frozen, Point, AnyModel, Order):
    register_type(_cls)


@pytest.fixture(autouse=True)
def _clean_registries() -> Iterator[None]:
    codecs = dict(codec_module._CODECS)
    types = dict(codec_module._REGISTERED)
    yield
    codec_module._CODECS.clear()
    codec_module._CODECS.update(codecs)
    codec_module._REGISTERED.clear()
    codec_module._REGISTERED.update(types)


def same(a: object, b: object) -> bool:
    """Equal and of the same type, recursively; nan equals nan; set order does not matter."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (  # type: ignore[arg-type]
            a == b and math.copysign(1, a) == math.copysign(1, b)  # type: ignore[arg-type]
        )
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, (dt.datetime, dt.time)):
        return a == b and a.utcoffset() == b.utcoffset()  # type: ignore[union-attr]
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(same, a, b))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return list(a) == list(b) and all(  # type: ignore[call-overload]
            same(ka, kb) and same(a[ka], b[kb])  # type: ignore[index]
            for ka, kb in zip(a, b, strict=True)  # type: ignore[call-overload]
        )
    if isinstance(a, (set, frozenset)):
        return len(a) == len(b) and all(  # type: ignore[arg-type]
            any(same(x, y) for y in b)  # type: ignore[attr-defined]
            for x in a
        )
    if dataclasses.is_dataclass(a):
        return all(
            same(getattr(a, f.name), getattr(b, f.name))
            for f in dataclasses.fields(a)  # type: ignore[arg-type]
        )
    if isinstance(a, pydantic.BaseModel):
        return all(same(getattr(a, f), getattr(b, f)) for f in type(a).model_fields)
    return a == b


def round_trip(value: object, codec: JSONCodec = DEFAULT_CODEC) -> object:  # type: ignore[assignment]
    return codec.decode(codec.encode(value))


# ---- strategies over every supported type

# Whole seconds: Python 3.11's fromisoformat reads "+00:00:00.000001" as UTC (no real zone
# has a sub-second offset).
offsets = st.integers(-86399, 86399).map(lambda s: dt.timezone(dt.timedelta(seconds=s)))
tz = st.none() | offsets
hashable_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(max_size=20)
    | st.datetimes(timezones=tz)
    | st.dates()
    | st.times(timezones=tz)
    | st.timedeltas()
    | st.uuids()
    | st.decimals(allow_nan=False)
    | st.sampled_from([*Color, *Level, Perm.R, Perm.R | Perm.W])
)
hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
leaves = hashable_leaves | st.floats() | st.just("$t")


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    str_keys = st.text(max_size=4) | st.just("$t") | st.just("v")
    return (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(str_keys, inner, max_size=4)
        | st.dictionaries(hashables, inner, max_size=3)
        | st.sets(hashables, max_size=3)
        | st.frozensets(hashables, max_size=3)
        | st.builds(Box, inner, st.text(max_size=3))
        | st.builds(Point, inner, inner)
        | st.builds(AnyModel, value=inner)
        | st.builds(Frozen, st.integers())
    )


values = st.recursive(leaves, containers, max_leaves=12)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_round_trip_keeps_value_and_type(value: object) -> None:
    assert same(round_trip(value), value)


@settings(max_examples=50)
@given(values)
def test_payload_round_trip_through_protobuf(value: object) -> None:
    wire = encode_payload(value).SerializeToString()
    payload = pb.Payload.FromString(wire)
    assert payload.codec == "json"
    assert same(decode_payload(payload), value)


@settings(max_examples=50)
@given(values)
def test_encoding_is_deterministic(value: object) -> None:
    assert DEFAULT_CODEC.encode(value) == DEFAULT_CODEC.encode(value)


# ---- explicit round trips


def test_plain_json_is_plain_and_compact() -> None:
    assert DEFAULT_CODEC.encode({"a": [1, 2.5, None, True], "é": "ü"}) == (
        '{"a":[1,2.5,null,true],"é":"ü"}'.encode()
    )


def test_user_dict_with_tag_key_stays_a_dict() -> None:
    for value in ({"$t": "tuple", "v": [1, 2]}, {"$t": "dataclass", "c": "x:Y", "v": {}}):
        assert same(round_trip(value), value)
        assert same(round_trip([value, (value,)]), [value, (value,)])


def test_special_floats() -> None:
    decoded = round_trip([float("nan"), float("inf"), float("-inf"), -0.0])
    assert isinstance(decoded, list)
    assert math.isnan(decoded[0])
    assert decoded[1:] == [math.inf, -math.inf, 0.0]
    assert math.copysign(1, decoded[3]) == -1


def test_datetimes_keep_offset_and_microseconds() -> None:
    aware = dt.datetime(
        2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))
    )
    naive = dt.datetime(1, 1, 1, 0, 0, 0, 1)
    back = round_trip(
        [aware, naive, aware.date(), aware.timetz(), dt.timedelta(days=-3, microseconds=7)]
    )
    assert same(
        back, [aware, naive, aware.date(), aware.timetz(), dt.timedelta(days=-3, microseconds=7)]
    )
    assert back[0].utcoffset() == dt.timedelta(hours=5, minutes=30)  # type: ignore[index]


def test_dataclass_with_init_false_field_and_nested_values() -> None:
    value = Box(Frozen(4), label="x")
    back = round_trip(value)
    assert same(back, value)
    assert back.item.derived == 8  # type: ignore[attr-defined]


def test_pydantic_model_round_trip_with_alias_and_extra() -> None:
    order = Order(
        id=uuid.uuid4(),
        placed=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        lines=(1, 2),
        box=Box({1: {"a"}}),
        Total=Decimal("9.90"),
        note=("gift", b"\x00"),
        **{"$t": "tuple"},
    )
    back = round_trip(order)
    assert isinstance(back, Order)
    assert back == order
    assert same(back.box, order.box)
    assert back.model_extra == {"note": ("gift", b"\x00"), "$t": "tuple"}


def test_enums_including_flags_and_int_enums() -> None:
    value = [Color.PAIR, Level.HIGH, Perm.R | Perm.W, {Level.LOW: Color.RED}]
    assert same(round_trip(value), value)


def test_lone_surrogates_round_trip() -> None:
    assert round_trip({"\udc80": "\ud800x"}) == {"\udc80": "\ud800x"}


def test_set_bytes_do_not_depend_on_hash_seed() -> None:
    program = (
        "import sys; from substantial.codec import DEFAULT_CODEC as c;"
        "sys.stdout.write(c.encode({'s': {'alpha', 'beta', 'gamma', 'delta', ('x', 1)}}).hex())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", program],
            env={"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1


# ---- class resolution


def test_local_class_needs_registration() -> None:
    @dataclasses.dataclass
    class Local:
        a: int

    with pytest.raises(CodecError) as info:
        DEFAULT_CODEC.encode({"k": [Local(1)]})
    assert str(info.value) == (
        "cannot encode value of type 'test_local_class_needs_registration.<locals>.Local' "
        "at value['k'][0]: class '{M}:test_local_class_needs_registration."
        "<locals>.Local' is not allowed; allow it with substantial.codec.register_type(), "
        "or name it in the annotations of a workflow or of a step function"
    ).replace("{M}", __name__)
    register_type(Local)
    assert round_trip({"k": [Local(1)]}) == {"k": [Local(1)]}


def test_codec_with_explicit_types_only() -> None:
    @dataclasses.dataclass
    class Local:
        a: int

    strict = JSONCodec(types=[Local, Box], registered_only=True)
    assert round_trip(Box(Local(2)), strict) == Box(Local(2))
    with pytest.raises(
        CodecError, match=r"^cannot encode value of type 'Unlisted' at value\.item: "
    ):
        strict.encode(Box(Unlisted.ONE))
    data = JSONCodec(trust_imported=True).encode(Unlisted.ONE)
    with pytest.raises(CodecError) as info:
        strict.decode(data)
    assert str(info.value) == (
        "cannot resolve class '{M}:Unlisted': it is not registered with this codec"
    ).replace("{M}", __name__)


def test_unresolvable_class_names_when_trusting_imported_modules() -> None:
    trusting = JSONCodec(trust_imported=True)
    cases = {
        b'{"$t":"dataclass","c":"this:Zen","v":{}}': (
            "cannot resolve class 'this:Zen': "
            "module 'this' is not imported (the codec never imports)"
        ),
        b'{"$t":"dataclass","c":"{M}:Missing","v":{}}': (
            "cannot resolve class '{M}:Missing': module '{M}' has no attribute 'Missing'"
        ),
        b'{"$t":"dataclass","c":"{M}:NotAClass","v":{}}': (
            "cannot resolve class '{M}:NotAClass': it is not a dataclass"
        ),
        b'{"$t":"enum","c":"{M}:Box","v":1}': ("cannot resolve class '{M}:Box': it is not an Enum"),
        b'{"$t":"pydantic","c":"os:system","v":{}}': (
            "cannot resolve class 'os:system': 'system' is not a class"
        ),
        b'{"$t":"dataclass","c":"{M}:Box","v":{"nope":1}}': (
            "cannot rebuild dataclass '{M}:Box': unknown fields ['nope']"
        ),
        b'{"$t":"enum","c":"{M}:Color","v":"blue"}': (
            "cannot rebuild enum '{M}:Color': 'blue' is not a valid Color"
        ),
    }
    for data, message in cases.items():
        with pytest.raises(CodecError) as info:
            trusting.decode(data.replace(b"{M}", __name__.encode()))
        assert str(info.value) == message.replace("{M}", __name__)
    assert "this" not in sys.modules


# ---- encode errors


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([{"lock": threading.Lock()}], "cannot encode value of type 'lock' at args[0]['lock']"),
        ((1, Box([object()])), "cannot encode value of type 'object' at args[1].item[0]"),
        ({1: {2: NotAClass()}}, "cannot encode value of type 'NotAClass' at args[1][2]"),
        ({NotAClass(): 1}, "cannot encode value of type 'NotAClass' at args<key NotAClass()>"),
        ({"s": {NotAClass()}}, "cannot encode value of type 'NotAClass' at args['s']{item}"),
        (
            AnyModel(value=[1, NotAClass()]),
            "cannot encode value of type 'NotAClass' at args.value[1]",
        ),
        (OrderedDict(a=1), "cannot encode value of type 'OrderedDict' at args"),
        ([bytearray(b"x")], "cannot encode value of type 'bytearray' at args[0]"),
    ],
)
def test_encode_error_names_type_and_place(value: object, message: str) -> None:
    NotAClass.__repr__ = lambda self: "NotAClass()"  # type: ignore[method-assign,assignment]
    with pytest.raises(CodecError) as info:
        encode_payload(value, where="args")
    assert str(info.value) == f"{message}: {ENCODABLE}"  # and says what would do


def test_cycle_and_deep_nesting() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(
        CodecError, match=r"^cannot encode value: nested too deeply or contains a cycle$"
    ):
        DEFAULT_CODEC.encode(cycle)
    with pytest.raises(CodecError, match="nested too deeply"):
        DEFAULT_CODEC.decode(b"[" * 100_000 + b"]" * 100_000)


def test_huge_int_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match=r"^cannot encode value: "):
        DEFAULT_CODEC.encode(10**5000)


# ---- decode errors


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "codec 'json' could not decode 1 bytes: Expecting property name enclosed"),
        (b"\xff", "codec 'json' could not decode 1 bytes: 'utf-8' codec can't decode"),
        (b"1 2", "codec 'json' could not decode 3 bytes: Extra data"),
        (b'{"$t":"pickle","v":"x"}', "codec 'json' found an unknown tag 'pickle'"),
        (b'{"$t":null}', "codec 'json' found an unknown tag None"),
        (
            b'{"$t":"tuple","v":[],"x":1}',
            "codec 'json' found a bad 'tuple' object: expected the keys",
        ),
        (b'{"$t":"bytes","v":"@@"}', "codec 'json' found a bad 'bytes' object: "),
        (
            b'{"$t":"float","v":"1e9"}',
            "codec 'json' found a bad 'float' object: not a special float",
        ),
        (b'{"$t":"datetime","v":"yesterday"}', "codec 'json' found a bad 'datetime' object: "),
        (b'{"$t":"dict","v":[[[1],2]]}', "codec 'json' found a bad 'dict' object: unhashable"),
        (b'{"$t":"dataclass","v":{}}', "codec 'json' found a bad 'dataclass' object: expected"),
        (b'{"$t":["x"],"v":1}', "codec 'json' could not decode 18 bytes: unhashable"),
    ],
)
def test_decode_error_names_codec_and_reason(data: bytes, message: str) -> None:
    with pytest.raises(CodecError) as info:
        decode_payload(pb.Payload(codec="json", data=data))
    assert str(info.value).startswith(message)


# ---- codec registry


class Upper:
    """A foreign codec: ASCII text, upper-cased."""

    name = "upper"

    def encode(self, value: object) -> bytes:
        return str(value).upper().encode("ascii")

    def decode(self, data: bytes) -> object:
        return data.decode("ascii")


def test_registry() -> None:
    assert get_codec("json") is DEFAULT_CODEC
    with pytest.raises(CodecError) as info:
        decode_payload(pb.Payload(codec="upper", data=b"X"))
    assert str(info.value) == "unknown codec 'upper'; registered codecs: json"
    register_codec(Upper())
    payload = encode_payload("abc", Upper())
    assert payload == pb.Payload(codec="upper", data=b"ABC")
    assert decode_payload(pb.Payload.FromString(payload.SerializeToString())) == "ABC"
    with pytest.raises(CodecError) as info:
        get_codec("msgpack")
    assert str(info.value) == "unknown codec 'msgpack'; registered codecs: json, upper"


def test_foreign_codec_failures_become_codec_errors() -> None:
    register_codec(Upper())
    with pytest.raises(
        CodecError, match=r"^codec 'upper' cannot encode result: UnicodeEncodeError"
    ):
        encode_payload("é", Upper(), where="result")
    with pytest.raises(
        CodecError, match=r"^codec 'upper' could not decode 1 bytes: UnicodeDecodeError"
    ):
        decode_payload(pb.Payload(codec="upper", data=b"\xff"))


def test_empty_payload_and_bad_registrations() -> None:
    with pytest.raises(CodecError, match=r"^payload names no codec"):
        decode_payload(pb.Payload())
    with pytest.raises(CodecError, match="its name must be a non-empty string"):
        register_codec(type("Nameless", (), {"name": ""})())  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="not a dataclass, Enum, pydantic model, NamedTuple"):
        register_type(NotAClass)
    with pytest.raises(CodecError, match="not a dataclass, Enum, pydantic model, NamedTuple"):
        JSONCodec(types=[dict])

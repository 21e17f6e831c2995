"""The codec rebuilds only the classes the application allows (issue #10)."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator
from typing import Any, NamedTuple

import pydantic
import pytest

from substantial import CodecError, Context, RunNotFound, workflow
from substantial import codec as codec_module
from substantial.codec import (
    JSONCodec,
    decode_payload,
    encode_payload,
    register_codec,
    register_type,
)
from substantial.protocol import substantial_pb2 as pb
from substantial.testing import Replayer, WorkflowEnvironment

HOW = (
    "allow it with substantial.codec.register_type(), or name it in the annotations "
    "of a workflow or of a step function"
)


@pytest.fixture(autouse=True)
def _clean_registries() -> Iterator[None]:
    codecs = dict(codec_module._CODECS)
    types = dict(codec_module._REGISTERED)
    yield
    codec_module._CODECS.clear()
    codec_module._CODECS.update(codecs)
    codec_module._REGISTERED.clear()
    codec_module._REGISTERED.update(types)


# ---- classes no annotation names and nothing registers


@dataclasses.dataclass
class Unlisted:
    command: str


class Shade(enum.Enum):
    DARK = "dark"


# ---- classes only annotations name. The workflow comes first: it names classes defined
# further down, which the codec resolves when it first needs them.


@workflow(name="allow.ship")
async def ship(c: Context, order: Order | None, lines: list[Line]) -> dict[str, Receipt]:
    quote = await c.save(lambda: make_quote(lines))  # a lambda: its result's type is unknown
    priced = await c.save(price)
    assert order is not None
    return {order.ref: Receipt(quote=quote, total=priced, status=order.status)}


def make_quote(lines: list[Line]) -> dict[str, int]:
    return {"lines": len(lines)}


def price() -> Priced:  # a step's return annotation allows its class
    return Priced(cents=1250)


class Status(enum.Enum):
    NEW = "new"
    PAID = "paid"


class Money(pydantic.BaseModel):
    cents: int


class Line(NamedTuple):
    sku: str
    price: Money  # reached through the NamedTuple's fields


@dataclasses.dataclass(frozen=True)
class Order:
    ref: str
    status: Status  # reached through the dataclass's fields


@dataclasses.dataclass(frozen=True)
class Priced:
    cents: int


class Receipt(pydantic.BaseModel):
    quote: dict[str, int]
    total: Priced
    status: Status


@dataclasses.dataclass
class Checked:
    """Allowed through ``takes_checked``; validates in ``__post_init__``."""

    x: int
    double: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.x < 0:
            raise ValueError("x must not be negative")
        self.double = 2 * self.x


@workflow(name="allow.checked")
async def takes_checked(c: Context, value: Checked) -> None:
    pass


@workflow(name="allow.any")
async def takes_anything(c: Context, value: Any) -> Any:
    return await c.receive("go")


# ---- refused


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("substantial._engine.workflow:Workflow", '{"fn":"os.system","name":"x","signature":null}'),
        (
            "substantial._store.leases:Lease",
            '{"run_id":"r","owner":"me","version":"1","expires_ms":0}',
        ),
        ("substantial._core.retry:RetryPolicy", '{"max_attempts":1}'),
        (f"{__name__}:Unlisted", '{"command":"rm -rf /"}'),
    ],
)
def test_crafted_payload_naming_an_imported_class_is_refused(name: str, fields: str) -> None:
    data = f'{{"$t":"dataclass","c":"{name}","v":{fields}}}'.encode()
    with pytest.raises(CodecError) as info:
        decode_payload(pb.Payload(codec="json", data=data))
    assert str(info.value) == f"cannot resolve class {name!r}: it is not allowed; {HOW}"


def test_crafted_log_is_refused_on_replay() -> None:
    crafted = b'{"$t":"dataclass","c":"substantial._store.leases:Lease","v":{}}'
    events = [
        pb.Event(
            at_ms=1,
            started=pb.Started(
                run_id="r", workflow="allow.any",
                args=pb.Payload(codec="json", data=b'[[null],{}]'),
            ),
        ),
        pb.Event(
            at_ms=2,
            event_received=pb.EventReceived(
                id="e1", name="go", value=pb.Payload(codec="json", data=crafted)
            ),
        ),
    ]  # fmt: skip
    with pytest.raises(
        CodecError, match=r"'substantial\._store\.leases:Lease': it is not allowed; allow it"
    ):
        Replayer(takes_anything).replay(events)


def test_encoding_an_unallowed_class_fails_with_how_to_allow_it() -> None:
    with pytest.raises(CodecError) as info:
        encode_payload([Order("o-1", Status.NEW), Shade.DARK], where="args")
    assert str(info.value) == (
        f"cannot encode value of type 'Shade' at args[1]: class '{__name__}:Shade' "
        f"is not allowed; {HOW}"
    )


async def test_start_and_send_refuse_an_unallowed_class_before_writing() -> None:
    async with WorkflowEnvironment(takes_anything) as env:
        with pytest.raises(CodecError, match=f"class '{__name__}:Unlisted' is not allowed"):
            await env.start(takes_anything, Unlisted("x"), run_id="never")
        with pytest.raises(RunNotFound):
            await env.handle("never").status()
        handle = await env.start(takes_anything, None)
        with pytest.raises(CodecError, match=f"at event 'go': class '{__name__}:Shade'"):
            await handle.send("go", Shade.DARK)
        await handle.send("go", "plain")
        assert await handle.result() == "plain"


# ---- allowed


async def test_classes_named_in_annotations_round_trip_through_a_run() -> None:
    lines = [Line("a", Money(cents=500)), Line("b", Money(cents=750))]
    async with WorkflowEnvironment(ship) as env:
        handle = await env.start(ship, Order("o-1", Status.PAID), lines)
        result = await handle.result()
    assert result == {
        "o-1": Receipt(quote={"lines": 2}, total=Priced(cents=1250), status=Status.PAID)
    }
    for cls in (Order, Line, Money, Status, Priced, Receipt):
        assert codec_module._REGISTERED.get(codec_module.name_of(cls)) is None  # not registered


async def test_registered_classes_round_trip_as_events_and_status() -> None:
    @workflow(name="allow.events")
    async def relay(c: Context) -> Any:
        value = await c.receive("go")
        c.set_status(value)
        return value

    register_type(Unlisted)
    register_type(Shade)
    async with WorkflowEnvironment(relay) as env:
        handle = await env.start(relay)
        await handle.send("go", [Unlisted("ls"), Shade.DARK])
        assert await handle.result() == [Unlisted("ls"), Shade.DARK]
        assert await handle.query() == [Unlisted("ls"), Shade.DARK]


def test_registered_only_ignores_annotations() -> None:
    strict = JSONCodec(registered_only=True)
    data = encode_payload(Status.NEW).data
    with pytest.raises(CodecError, match="it is not registered with this codec"):
        strict.decode(data)
    with pytest.raises(CodecError, match="is not registered with this codec"):
        strict.encode(Status.NEW)


def test_trust_imported_restores_lookup_in_imported_modules() -> None:
    data = b'{"$t":"dataclass","c":"%s:Unlisted","v":{"command":"ls"}}' % __name__.encode()
    assert JSONCodec(trust_imported=True).decode(data) == Unlisted("ls")
    with pytest.raises(CodecError, match="it is not allowed"):
        decode_payload(pb.Payload(codec="json", data=data))
    register_codec(JSONCodec(trust_imported=True))  # for the whole process
    assert decode_payload(pb.Payload(codec="json", data=data)) == Unlisted("ls")
    assert decode_payload(encode_payload(Shade.DARK)) is Shade.DARK


# ---- how a dataclass is rebuilt


def test_dataclass_is_rebuilt_through_its_init() -> None:
    name = f"{__name__}:Checked"
    assert encode_payload(Checked(3)).data == b'{"$t":"dataclass","c":"%s","v":{"x":3}}' % (
        name.encode()
    )
    forced = b'{"$t":"dataclass","c":"%s","v":{"x":3,"double":99}}' % name.encode()
    rebuilt = decode_payload(pb.Payload(codec="json", data=forced))
    assert isinstance(rebuilt, Checked)
    assert rebuilt.double == 6  # an init=False field is set by the class, not the payload
    cases = {
        b'{"x":-1}': f"cannot rebuild dataclass {name!r}: x must not be negative",
        b'{"x":1,"command":"ls"}': f"cannot rebuild dataclass {name!r}: unknown fields",
        b"[1]": f"cannot rebuild dataclass {name!r}: expected an object of fields, got list",
    }
    for fields, message in cases.items():
        data = b'{"$t":"dataclass","c":"%s","v":%s}' % (name.encode(), fields)
        with pytest.raises(CodecError) as info:
            decode_payload(pb.Payload(codec="json", data=data))
        assert str(info.value).startswith(message)

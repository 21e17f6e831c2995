"""Payload codecs: compression and AES-256-GCM encryption at rest, key rotation, unknown keys."""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from substantial import (
    AESGCMCodec,
    CodecError,
    Context,
    EncryptedPayload,
    RunStatus,
    ZlibCodec,
    ZstdCodec,
    workflow,
)
from substantial import _payload_codecs as registry
from substantial._payload_codecs import parse_keys
from substantial.backends import Backend, FSBackend
from substantial.codec import decode_payload, encode_payload
from substantial.ops import describe_run, get_run
from tests.harness import WAIT, make_conductor, wait_for_status

ROOT = Path(__file__).resolve().parent.parent
KEY1 = bytes(range(32))
KEY2 = bytes(range(32, 64))
SECRETS = ("alice-secret-arg", "step-secret-value", "event-secret-value", "status-secret")


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    """Each test registers its own keys; none leak into the next."""
    keyring, codecs = dict(registry._KEYRING), dict(registry._PAYLOAD_CODECS)
    yield
    registry._KEYRING.clear()
    registry._KEYRING.update(keyring)
    registry._PAYLOAD_CODECS.clear()
    registry._PAYLOAD_CODECS.update(codecs)


def forget_keys() -> None:
    """As in a process that was never given the keys."""
    registry._KEYRING.clear()
    registry._PAYLOAD_CODECS.pop(AESGCMCodec.name, None)


@workflow(name="codecs.secret")
async def secret(c: Context, name: str) -> str:
    step = await c.save(lambda: "step-secret-value")
    c.set_status("status-secret")
    event = await c.receive("go")
    return f"{name}/{step}/{event}/result-secret"


async def stored_bytes(backend: Backend) -> bytes:
    keys = await backend.list_all("")
    return b"".join(entry[0] for entry in await backend.get_many(keys) if entry is not None)


async def test_an_encrypted_run_stores_none_of_its_plaintext(backend: Backend) -> None:
    codecs = [ZstdCodec(), AESGCMCodec({"k1": KEY1})]
    async with make_conductor(backend, secret, virtual_clock=True, codecs=codecs) as conductor:
        handle = await conductor.start(secret, "alice-secret-arg", run_id="secret")
        await wait_for_status(handle, RunStatus.WAITING)
        await handle.send("go", "event-secret-value")
        expected = "alice-secret-arg/step-secret-value/event-secret-value/result-secret"
        assert await handle.result(timeout=WAIT) == expected
        assert await handle.query() == "status-secret"
        history = await handle.history()
    assert history[0].details["args"] == [["alice-secret-arg"], {}]
    data = await stored_bytes(backend)
    for plain in (*SECRETS, "result-secret", "secret/step"):
        assert plain.encode() not in data, plain
    assert b"k1" in data  # each payload names its key

    forget_keys()  # the CLI without $SUBSTANTIAL_KEYS
    summary = await get_run(backend, "secret")
    assert summary.result == summary.args == summary.custom_status == "<encrypted>"
    registry.keys_from_env({"SUBSTANTIAL_KEYS": f"k1:{base64.b64encode(KEY1).decode()}"})
    summary = await get_run(backend, "secret")
    assert summary.result == expected
    details = await describe_run(backend, "secret")
    assert details.history[0].details["args"] == [["alice-secret-arg"], {}]


@workflow(name="codecs.echo")
async def echo(c: Context, value: str) -> str:
    return await c.save(lambda: value.upper())


async def test_key_rotation_reads_old_and_new_runs(backend: Backend) -> None:
    async with make_conductor(
        backend, echo, virtual_clock=True, codecs=[AESGCMCodec({"k1": KEY1})]
    ) as conductor:
        old = await conductor.start(echo, "old", run_id="old")
        assert await old.result(timeout=WAIT) == "OLD"
    forget_keys()
    rotated = AESGCMCodec({"k2": KEY2, "k1": KEY1})  # k2 encrypts, k1 still decrypts
    async with make_conductor(backend, echo, virtual_clock=True, codecs=[rotated]) as conductor:
        new = await conductor.start(echo, "new", run_id="new")
        assert await new.result(timeout=WAIT) == "NEW"
        assert await conductor.handle("old").result(timeout=WAIT) == "OLD"
        assert (await conductor.handle("old").history())[0].details["args"] == [["old"], {}]
    segment = await backend.get("runs/new/log/000000000000")
    assert segment is not None
    assert b"k2" in segment[0]
    assert b"k1" not in segment[0]


async def test_an_unknown_key_parks_that_run_naming_the_key_and_others_go_on(
    backend: Backend,
) -> None:
    writer = make_conductor(backend, echo, codecs=[AESGCMCodec({"k9": KEY2})])
    await writer.start(echo, "lost", run_id="lost")  # its agent never runs
    forget_keys()
    async with make_conductor(
        backend, echo, virtual_clock=True, codecs=[AESGCMCodec({"k1": KEY1})]
    ) as conductor:
        lost = conductor.handle("lost")
        other = await conductor.start(echo, "fine", run_id="fine")
        assert await other.result(timeout=WAIT) == "FINE"
        await wait_for_status(lost, RunStatus.PARKED)
        summary = await get_run(backend, "lost")
    assert "key id 'k9'" in summary.parked_reason
    assert summary.args == "<encrypted>"


def test_each_codec_round_trips_and_names_itself() -> None:
    codecs: list[Any] = [ZlibCodec(), ZstdCodec(), AESGCMCodec({"a": KEY1})]
    for codec in codecs:
        data, key_id = codec.encode(b"hello " * 100)
        assert codec.decode(data, key_id) == b"hello " * 100
    payload = encode_payload({"x": [1, 2, 3]})
    from substantial._payload_codecs import chain_encode

    data, names, key_id = chain_encode(codecs, payload.data)
    assert names == ["zlib", "zstd", "aes256gcm"]
    assert key_id == "a"
    sealed = type(payload)(codec="json", data=data, encodings=names, key_id=key_id)
    with pytest.raises(EncryptedPayload, match="key id 'a'"):
        decode_payload(sealed)  # not registered in this process
    registry.register_payload_codec(codecs[2])
    assert decode_payload(sealed) == {"x": [1, 2, 3]}


def test_a_tampered_payload_or_a_wrong_key_is_a_codec_error() -> None:
    codec = AESGCMCodec({"a": KEY1})
    data, _ = codec.encode(b"value")
    with pytest.raises(CodecError, match="does not decrypt"):
        codec.decode(data[:-1] + bytes([data[-1] ^ 1]), "a")
    with pytest.raises(CodecError, match="does not decrypt"):
        AESGCMCodec({"a": KEY2}).decode(data, "a")


def test_keys_format_and_its_errors() -> None:
    key = base64.b64encode(KEY1).decode()
    assert parse_keys(f"new:{key}, old:{key}") == {"new": KEY1, "old": KEY1}
    assert parse_keys("") == {}
    with pytest.raises(CodecError, match="expected 'id:base64key'"):
        parse_keys("nocolon")
    with pytest.raises(CodecError, match="'k' is not base64"):
        parse_keys("k:@@@")
    with pytest.raises(CodecError, match="must be 32 bytes"):
        parse_keys(f"k:{base64.b64encode(os.urandom(16)).decode()}")
    with pytest.raises(CodecError, match="current key id 'x'"):
        AESGCMCodec({"a": KEY1}, current="x")


def test_the_same_value_seals_to_the_same_bytes() -> None:
    """A synthetic nonce: a summary rewritten every wake-up keeps one blob, not one each."""
    codec = AESGCMCodec({"a": KEY1})
    assert codec.encode(b"v")[0] == codec.encode(b"v")[0]
    assert codec.encode(b"v")[0] != codec.encode(b"w")[0]


async def run_cli(*args: str, keys: str | None) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SUBSTANTIAL_BACKEND", None)
    env.pop("SUBSTANTIAL_KEYS", None)
    if keys is not None:
        env["SUBSTANTIAL_KEYS"] = keys
    script = str(Path(sys.executable).with_name("substantial"))
    with anyio.fail_after(60):
        done = await anyio.run_process([script, *args], env=env, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_the_cli_reads_keys_from_the_environment(tmp_path: Path) -> None:
    backend = FSBackend(tmp_path / "store")
    url = f"file://{tmp_path / 'store'}"
    keys = f"k1:{base64.b64encode(KEY1).decode()}"
    codecs = [AESGCMCodec({"k1": KEY1})]
    async with make_conductor(backend, secret, virtual_clock=True, codecs=codecs) as conductor:
        handle = await conductor.start(secret, "alice-secret-arg", run_id="cli")
        await wait_for_status(handle, RunStatus.WAITING)
        code, out, err = await run_cli(
            "send", "cli", "go", '"event-secret-value"', "--backend", url, keys=keys
        )
        assert code == 0, err
        await handle.result(timeout=WAIT)
    assert b"event-secret-value" not in await stored_bytes(backend)  # the CLI encrypted it

    code, out, _ = await run_cli("show", "cli", "--backend", url, keys=None)
    assert code == 0
    assert "<encrypted>" in out
    assert "secret-value" not in out
    code, out, _ = await run_cli("show", "cli", "--backend", url, keys=keys)
    assert code == 0
    assert "event-secret-value" in out
    code, _, err = await run_cli("list", "--backend", url, keys="k1:notbase64!")
    assert code == 2
    assert "SUBSTANTIAL_KEYS" in err

"""
The wire format's two promises, checked on every change.

1. The committed generated code (``substantial/protocol/*_pb2.py`` and ``.pyi``) is exactly
   what ``protocol/*.proto`` generates: a stale file fails with "run `make protocol`".
2. ``protocol/*.proto`` stays backward compatible with the committed snapshot
   ``protocol/substantial.v1.lock``: every message, field (name, number, type, label,
   oneof) and enum value in the snapshot still exists unchanged. Fields may be added; then
   refresh the snapshot with ``make protocol-lock`` (``python tests/test_protocol.py
   --write-lock``).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protocol"
GENERATED_DIR = ROOT / "substantial" / "protocol"
LOCK = PROTO_DIR / "substantial.v1.lock"

Schema = dict[str, Any]
F = descriptor_pb2.FieldDescriptorProto


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def _protoc(*args: str) -> None:
    """Run grpcio-tools' protoc (as `make protocol` does) with protoc-gen-mypy on PATH."""
    bin_dir = str(Path(sys.executable).parent)  # the venv's bin, not the resolved symlink
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", *args]
    cmd += [str(p) for p in proto_files()]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"protoc failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr}")


def _versions() -> str:
    found = []
    for dist in ("grpcio-tools", "mypy-protobuf", "protobuf"):
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{dist} (not installed)")
    return ", ".join(found)


# ---- 1. the committed generated code is current ----


@pytest.fixture(scope="module")
def generated() -> Iterator[Path]:
    if shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("protoc-gen-mypy is not installed: run `make test` (installs the [dev] extras)")
    with tempfile.TemporaryDirectory() as out:
        _protoc(f"--python_out={out}", f"--mypy_out={out}")
        yield Path(out)


def _generated_names() -> list[str]:
    return [f"{p.stem}_pb2{ext}" for p in proto_files() for ext in (".py", ".pyi")]


def test_there_is_a_proto() -> None:
    assert proto_files(), f"no .proto files found in {PROTO_DIR}"


@pytest.mark.parametrize("name", _generated_names())
def test_generated_code_is_current(generated: Path, name: str) -> None:
    committed = GENERATED_DIR / name
    fresh = (generated / name).read_bytes()
    if not committed.exists():
        pytest.fail(f"{committed.relative_to(ROOT)} is missing: run `make protocol` and commit it")
    current = committed.read_bytes()
    if current == fresh:
        return
    diff = difflib.unified_diff(
        current.decode(errors="replace").splitlines(),
        fresh.decode(errors="replace").splitlines(),
        f"committed/{name}",
        f"generated/{name}",
        lineterm="",
        n=1,
    )
    shown = [line if len(line) <= 200 else line[:200] + "..." for line in list(diff)[:40]]
    pytest.fail(
        f"{committed.relative_to(ROOT)} is stale: it differs from what protocol/*.proto "
        f"generates. Run `make protocol` and commit the result.\n"
        f"(generated here with {_versions()}; pyproject.toml pins the generator versions)\n"
        + "\n".join(shown),
        pytrace=False,
    )


# ---- 2. backward compatibility with the committed snapshot ----

_SCALARS = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in F.Type.items()
    if name not in ("TYPE_MESSAGE", "TYPE_ENUM", "TYPE_GROUP")
}


def _field_type(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type == F.TYPE_MESSAGE:
        return "message " + field.type_name.lstrip(".")
    if field.type == F.TYPE_ENUM:
        return "enum " + field.type_name.lstrip(".")
    if field.type == F.TYPE_GROUP:
        return "group " + field.type_name.lstrip(".")
    return _SCALARS[field.type]


def _field_label(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.label == F.LABEL_REPEATED:
        return "repeated"
    if field.proto3_optional:
        return "optional"
    if field.label == F.LABEL_REQUIRED:
        return "required"
    return "singular"


def _add_enum(schema: Schema, prefix: str, enum: descriptor_pb2.EnumDescriptorProto) -> None:
    schema["enums"][f"{prefix}.{enum.name}"] = {v.name: v.number for v in enum.value}


def _add_message(schema: Schema, prefix: str, msg: descriptor_pb2.DescriptorProto) -> None:
    name = f"{prefix}.{msg.name}"
    fields: dict[str, dict[str, Any]] = {}
    for field in msg.field:
        oneof = None
        if field.HasField("oneof_index") and not field.proto3_optional:
            oneof = msg.oneof_decl[field.oneof_index].name
        fields[field.name] = {
            "number": field.number,
            "type": _field_type(field),
            "label": _field_label(field),
            "oneof": oneof,
        }
    schema["messages"][name] = fields
    for nested in msg.nested_type:
        _add_message(schema, name, nested)
    for enum in msg.enum_type:
        _add_enum(schema, name, enum)


def current_schema() -> Schema:
    """Every message, field and enum value that protocol/*.proto declares right now."""
    with tempfile.TemporaryDirectory() as out:
        descriptor_set = Path(out) / "protocol.pb"
        _protoc(f"--descriptor_set_out={descriptor_set}")
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    schema: Schema = {"messages": {}, "enums": {}}
    for file in files.file:
        for msg in file.message_type:
            _add_message(schema, file.package, msg)
        for enum in file.enum_type:
            _add_enum(schema, file.package, enum)
    return schema


def _describe(field: dict[str, Any]) -> str:
    label = "" if field["label"] == "singular" else field["label"] + " "
    oneof = f" in oneof {field['oneof']}" if field["oneof"] else ""
    return f"#{field['number']} {label}{field['type']}{oneof}"


def incompatibilities(locked: Schema, current: Schema) -> list[str]:
    """What `current` broke of `locked`, one line per change; [] if it only added things."""
    problems: list[str] = []
    for msg, locked_fields in locked["messages"].items():
        if msg not in current["messages"]:
            problems.append(f"message {msg} was removed or renamed")
            continue
        now = current["messages"][msg]
        by_number = {f["number"]: name for name, f in now.items()}
        for name, was in locked_fields.items():
            where = f"{msg}.{name}"
            if name not in now:
                taken = by_number.get(was["number"])
                if taken is not None:
                    problems.append(
                        f"field {where} ({_describe(was)}) is gone: "
                        f"#{was['number']} is now {taken!r} ({_describe(now[taken])})"
                    )
                else:
                    problems.append(f"field {where} ({_describe(was)}) was removed or renamed")
                continue
            is_ = now[name]
            for key in ("number", "type", "label", "oneof"):
                if was[key] != is_[key]:
                    change = f"{key} changed from {was[key]!r} to {is_[key]!r}"
                    problems.append(f"field {where}: {change}")
    for enum, locked_values in locked["enums"].items():
        if enum not in current["enums"]:
            problems.append(f"enum {enum} was removed or renamed")
            continue
        now_values = current["enums"][enum]
        for value, number in locked_values.items():
            if value not in now_values:
                problems.append(f"enum value {enum}.{value} (= {number}) was removed or renamed")
            elif now_values[value] != number:
                change = f"number changed from {number} to {now_values[value]}"
                problems.append(f"enum value {enum}.{value}: {change}")
    return problems


def lock_text(schema: Schema) -> str:
    """The snapshot as JSON with one line per field and per enum value, so diffs read well."""
    lines = ["{"]
    for i, (section, entries) in enumerate(schema.items()):
        lines.append(f"  {json.dumps(section)}: {{")
        for j, (name, body) in enumerate(entries.items()):
            end = "," if j < len(entries) - 1 else ""
            if not body:
                lines.append(f"    {json.dumps(name)}: {json.dumps(body)}{end}")
                continue
            lines.append(f"    {json.dumps(name)}: {{")
            fields = [f"      {json.dumps(k)}: {json.dumps(v)}" for k, v in body.items()]
            lines.append(",\n".join(fields))
            lines.append(f"    }}{end}")
        lines.append("  }" + ("," if i < len(schema) - 1 else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_lock(path: Path = LOCK) -> None:
    path.write_text(lock_text(current_schema()), encoding="utf-8")


def test_proto_is_backward_compatible_with_lock() -> None:
    if not LOCK.exists():
        pytest.fail(f"{LOCK.relative_to(ROOT)} is missing: create it with `make protocol-lock`")
    locked = json.loads(LOCK.read_text(encoding="utf-8"))
    problems = incompatibilities(locked, current_schema())
    if problems:
        pytest.fail(
            f"protocol/*.proto is no longer backward compatible with "
            f"{LOCK.relative_to(ROOT)} (logs already written must still decode):\n  "
            + "\n  ".join(problems)
            + "\nFields may only be added (new names, new numbers). Undo the change above; "
            "retire a field by keeping it, never by removing, renumbering or re-typing it.",
            pytrace=False,
        )


_LOCKED: Schema = {
    "messages": {
        "v1.M": {
            "a": {"number": 1, "type": "string", "label": "singular", "oneof": None},
            "b": {"number": 2, "type": "message v1.P", "label": "singular", "oneof": "kind"},
        },
        "v1.P": {},
    },
    "enums": {"v1.E": {"E_ZERO": 0, "E_ONE": 1}},
}


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        pytest.param(_LOCKED, [], id="unchanged"),
        pytest.param(
            {**_LOCKED, "messages": {**_LOCKED["messages"], "v1.New": {}}},
            [],
            id="message-added",
        ),
        pytest.param(
            {
                **_LOCKED,
                "messages": {
                    **_LOCKED["messages"],
                    "v1.M": {
                        **_LOCKED["messages"]["v1.M"],
                        "c": {"number": 3, "type": "bool", "label": "singular", "oneof": None},
                    },
                },
            },
            [],
            id="field-added",
        ),
        pytest.param(
            {**_LOCKED, "messages": {"v1.M": _LOCKED["messages"]["v1.M"]}},
            ["message v1.P was removed or renamed"],
            id="message-removed",
        ),
        pytest.param(
            {
                **_LOCKED,
                "messages": {
                    **_LOCKED["messages"],
                    "v1.M": {
                        "a": {"number": 3, "type": "bytes", "label": "repeated", "oneof": None},
                        "b": _LOCKED["messages"]["v1.M"]["b"],
                    },
                },
            },
            [
                "field v1.M.a: number changed from 1 to 3",
                "field v1.M.a: type changed from 'string' to 'bytes'",
                "field v1.M.a: label changed from 'singular' to 'repeated'",
            ],
            id="field-changed",
        ),
        pytest.param(
            {
                **_LOCKED,
                "messages": {
                    **_LOCKED["messages"],
                    "v1.M": {
                        "z": {"number": 1, "type": "string", "label": "singular", "oneof": None},
                    },
                },
            },
            [
                "field v1.M.a (#1 string) is gone: #1 is now 'z' (#1 string)",
                "field v1.M.b (#2 message v1.P in oneof kind) was removed or renamed",
            ],
            id="field-renamed-and-removed",
        ),
        pytest.param(
            {**_LOCKED, "enums": {"v1.E": {"E_ZERO": 0, "E_UNO": 1}}},
            ["enum value v1.E.E_ONE (= 1) was removed or renamed"],
            id="enum-value-renamed",
        ),
        pytest.param(
            {**_LOCKED, "enums": {"v1.E": {"E_ZERO": 0, "E_ONE": 2}}},
            ["enum value v1.E.E_ONE: number changed from 1 to 2"],
            id="enum-value-renumbered",
        ),
    ],
)
def test_incompatibilities_say_what_changed(current: Schema, expected: list[str]) -> None:
    assert incompatibilities(_LOCKED, current) == expected


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-lock"]:
        sys.exit(f"usage: {sys.argv[0]} --write-lock   (refreshes {LOCK.relative_to(ROOT)})")
    write_lock()
    print(f"wrote {LOCK.relative_to(ROOT)}")

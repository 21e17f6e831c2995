"""Payload encryption keys for the CLI, from ``$SUBSTANTIAL_KEYS`` (``id1:base64key,...``)."""

from __future__ import annotations

import click

from substantial._payload_codecs import KEYS_ENV, PayloadCodec, keys_from_env
from substantial.errors import CodecError

__all__ = ["cli_codecs", "load_keys"]

_CODECS: list[PayloadCodec] = []


def load_keys() -> None:
    """
    Register the keys in ``$SUBSTANTIAL_KEYS`` so encrypted values can be shown, and so
    what ``start`` and ``send`` write is encrypted with the first of them.
    """
    try:
        codec = keys_from_env()
    except CodecError as exc:
        raise click.UsageError(f"${KEYS_ENV}: {exc}") from None
    _CODECS[:] = [codec] if codec is not None else []


def cli_codecs() -> list[PayloadCodec]:
    """The payload codecs the CLI writes with: encryption with ``$SUBSTANTIAL_KEYS``."""
    return list(_CODECS)

"""Payload encryption keys for the CLI, from ``$SUBSTANTIAL_KEYS`` (``id1:base64key,...``)."""

from __future__ import annotations

import click

from substantial._payload_codecs import KEYS_ENV, keys_from_env
from substantial.errors import CodecError

__all__ = ["load_keys"]


def load_keys() -> None:
    """Register the keys in ``$SUBSTANTIAL_KEYS`` so encrypted values can be shown."""
    try:
        keys_from_env()
    except CodecError as exc:
        raise click.UsageError(f"${KEYS_ENV}: {exc}") from None

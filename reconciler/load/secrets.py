"""Service keys: where they come from, and a type that never prints them."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

KEY_LEN = 16
# The longest key file: "hex:" and 32 hex digits, a newline (CRLF, a BOM: still refused by
# decode_key, but with a message about the key, not about the file's size).
MAX_KEY_FILE = 64


class KeyUnavailable(ValueError):
    """A key that cannot be read or decoded; the message never contains key material."""


@dataclass(frozen=True, slots=True)
class Secret:
    """Key bytes, zero-padded to KEY_LEN. repr/str never show them."""

    value: bytes

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__


def decode_key(text: str) -> Secret:
    """`hex:` + up to 32 hex digits, or 1-16 bytes of UTF-8 text."""
    if text.startswith("hex:"):
        digits = text[4:]
        if not digits or len(digits) % 2 or len(digits) > 2 * KEY_LEN:
            raise KeyUnavailable(f"a hex: key needs an even number of hex digits, at most {2 * KEY_LEN}")
        try:
            raw = bytes.fromhex(digits)
        except ValueError:
            raise KeyUnavailable("a hex: key may hold only hex digits") from None
    else:
        raw = text.encode("utf-8")
        if not raw:
            raise KeyUnavailable("the key is empty")
        if len(raw) > KEY_LEN:
            raise KeyUnavailable(f"the key is {len(raw)} bytes; at most {KEY_LEN}")
    return Secret(raw.ljust(KEY_LEN, b"\0"))


def read_key_file(path: Path) -> Secret:
    try:
        st = path.stat()
    except OSError as exc:
        raise KeyUnavailable(f"key file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyUnavailable(f"key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyUnavailable(
            f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must not be accessible "
            f"by group or others (chmod 600 {path})")
    if st.st_size > MAX_KEY_FILE:  # neither its size nor its content is told
        raise KeyUnavailable(f"key file {path} is larger than a key can be "
                             f"(at most {MAX_KEY_FILE} bytes)")
    try:
        with open(path, "rb") as f:  # never more than a key: the file may grow meanwhile
            raw = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyUnavailable(f"key file {path}: {exc.strerror}") from None
    if len(raw) > MAX_KEY_FILE:
        raise KeyUnavailable(f"key file {path} is larger than a key can be "
                             f"(at most {MAX_KEY_FILE} bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyUnavailable(f"key file {path} is not UTF-8 text") from None
    return decode_key(text.removesuffix("\n"))


def read_key_env(name: str, environ: dict[str, str] | None = None) -> Secret:
    env = os.environ if environ is None else environ
    if name not in env:
        raise KeyUnavailable(f"environment variable {name} is not set")
    return decode_key(env[name])


@dataclass(frozen=True, slots=True)
class KeySource:
    """How a Service's key is given; resolved to a Secret when loading."""

    kind: Literal["inline", "file", "env"]
    ref: str | None = None  # file path or env name; None for inline

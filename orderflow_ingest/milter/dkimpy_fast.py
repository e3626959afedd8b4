"""Faster drop-ins for dkimpy's pure-Python RSA arithmetic, with dkimpy's own results.

dkimpy verifies RSA signatures with Python's pow() and converts integers to bytes in Python
loops: about 1.5 ms per signature here, most of what a signed message cost the milter. These
replacements do the same with OpenSSL (through `cryptography`) and int.to_bytes. Anything
they are not sure about (an unusual key, a hash we do not map) goes to dkimpy's original
code, so a verdict can never differ from dkimpy's, only arrive sooner.

Nothing changes at import: `install()` puts them in dkimpy's place, called once when the
daemon starts (`orderflow-ingest milter`, milter/command.py), so importing dkim_check (tests,
tools) leaves dkimpy as it is. The
names replaced are dkimpy 1.1's (pyproject bounds it below 1.2); tests/test_patch_contracts.py
fails when an upgrade renames one or stops looking it up where we replace it.
"""

from __future__ import annotations

import functools
from typing import Any

import dkim
import dkim.crypto
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, utils
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers

_original_verify = dkim.crypto.RSASSA_PKCS1_v1_5_verify
_original_int2str = dkim.crypto.int2str
_original_str2int = dkim.crypto.str2int


def int2str(n: int, length: int = -1) -> bytearray:
    """dkim.crypto.int2str: big-endian, at least one byte, exactly `length` when given
    (every value dkimpy passes with a length is below the modulus, so it fits)."""
    size = length if length >= 0 else max(1, (n.bit_length() + 7) // 8)
    return bytearray(n.to_bytes(size, "big"))


def str2int(s: bytes) -> int:
    return int.from_bytes(s, "big")


@functools.lru_cache(maxsize=1024)
def _openssl_key(exponent: int, modulus: int) -> RSAPublicKey:
    """One OpenSSL key object per distinct key: OpenSSL prepares its Montgomery form at the
    first verification and keeps it with the object, so a new object per message cost about
    110 us of a 2048-bit check. Failures are not cached (lru_cache keeps only returns)."""
    return RSAPublicNumbers(exponent, modulus).public_key()


def rsassa_pkcs1_v1_5_verify(hash: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    """dkim.crypto.RSASSA_PKCS1_v1_5_verify through OpenSSL."""
    algorithms = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}
    algorithm = algorithms.get(str(getattr(hash, "name", "")).lower())
    if algorithm is None:
        return bool(_original_verify(hash, signature, public_key))
    try:
        key = _openssl_key(public_key["publicExponent"], public_key["modulus"])
    except Exception:  # a key OpenSSL will not load: dkimpy decides
        return bool(_original_verify(hash, signature, public_key))
    # dkimpy reads the signature as an integer, so a signer that dropped leading zero bytes
    # still verifies there; OpenSSL wants exactly the modulus length.
    modulus_bytes = (public_key["modulus"].bit_length() + 7) // 8
    data = bytes(signature).rjust(modulus_bytes, b"\0")
    try:
        key.verify(data, hash.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm()))
    except InvalidSignature:
        return False
    return True


_original_evaluate_pk = dkim.evaluate_pk


@functools.lru_cache(maxsize=1024)
def _cached_key(record: bytes) -> Any:
    return _original_evaluate_pk(b"", record)


def evaluate_pk(name: Any, record: Any) -> Any:
    """dkim.evaluate_pk, parsed once per distinct key record (base64 and ASN.1 cost ~60 us a
    message for the same few keys). dkimpy only reads the parsed key; failures are never
    cached and keep dkimpy's message with the key's name."""
    if isinstance(record, bytes) and record:
        try:
            return _cached_key(record)
        except Exception:
            pass
    return _original_evaluate_pk(name, record)


def install() -> None:
    """Put the fast functions in dkimpy's place (idempotent); the milter calls it at start."""
    dkim.crypto.int2str = int2str
    dkim.crypto.str2int = str2int
    dkim.evaluate_pk = evaluate_pk  # load_pk_from_dns looks the name up in dkim's namespace
    dkim.crypto.RSASSA_PKCS1_v1_5_verify = rsassa_pkcs1_v1_5_verify
    dkim.RSASSA_PKCS1_v1_5_verify = rsassa_pkcs1_v1_5_verify  # the name dkimpy calls


def installed() -> bool:
    """Whether install() ran in this process (the milter logs it at start)."""
    return dkim.evaluate_pk is evaluate_pk and dkim.RSASSA_PKCS1_v1_5_verify is (
        rsassa_pkcs1_v1_5_verify
    )

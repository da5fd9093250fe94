"""STAND-IN, replaced at merge: the two loaders of capfan.keys the collector uses (issue 6).
Reads ZMQ certificate files (NAME.key public, NAME.key_secret secret)."""
from __future__ import annotations

import os

import zmq.auth

from capfan.errors import CapfanError


def load_keypair(path: str) -> tuple[str, str]:
    """(public, secret) Z85 keys from a NAME.key_secret file."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise CapfanError(f"cannot read key pair {path}: {e}") from None
    if not secret:
        raise CapfanError(f"{path} holds no secret key (pass the NAME.key_secret file)")
    return public.decode(), secret.decode()


def load_public_keys(dir_or_files) -> set[str]:
    """Z85 public keys of a directory of *.key files or of a list of files."""
    if isinstance(dir_or_files, str):
        if not os.path.isdir(dir_or_files):
            raise CapfanError(f"{dir_or_files} is not a directory of *.key files")
        files = [os.path.join(dir_or_files, n) for n in sorted(os.listdir(dir_or_files)) if n.endswith(".key")]
    else:
        files = list(dir_or_files)
    keys = set()
    for f in files:
        try:
            public, _ = zmq.auth.load_certificate(f)
        except (OSError, ValueError) as e:
            raise CapfanError(f"cannot read public key {f}: {e}") from None
        keys.add(public.decode())
    return keys

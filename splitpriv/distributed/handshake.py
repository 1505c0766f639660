"""The handshake every link runs before any training message: who may join, and on which run.

1. **Authentication** (a shared secret, ``--secret`` or ``$SPLITPRIV_SECRET``): each side sends a
   fresh 32-byte nonce (and whether it holds a secret); each answers the other's nonce with
   ``HMAC-SHA256(secret, "splitpriv/1" | role | nonce | prover rank | world size)``, compared
   with :func:`hmac.compare_digest`. The secret itself never crosses. A side holding a secret
   refuses a peer that holds none or answers wrongly; a side holding none refuses a peer that
   requires one. Without a secret on either side the link is unauthenticated (a warning says
   so when the rendezvous opens).
2. **The run's config**: both sides exchange :func:`run_key` (every field of the
   :class:`~splitpriv.run.TrainConfig` that changes what the run computes, the clients' mode
   and the world size) as JSON; each names the first field that differs and stops.

Order (server S = rank 0, client C): S→C NONCE, C→S NONCE, C→S PROOF, S→C PROOF, C→S CONFIG,
S→C CONFIG. The handshake has its own sequence numbers (its own channel), so the protocol's
messages that follow start at #0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
import struct
from typing import Any

import torch

from splitpriv.distributed.channel import DistChannel
from splitpriv.distributed.spec import DistSpec
from splitpriv.distributed.wire import CONFIG_BYTES, HANDSHAKE_SPECS, Code, PeerError, WireError

#: config fields that may differ between the parties (where each finds its files, its device,
#: its kernels)
LOCAL_FIELDS = ("device", "threads", "fast", "mitdb_dir", "cache_dir")


class AuthError(WireError):
    """A peer that does not hold the run's shared secret (or requires one this side lacks)."""


def run_key(config: Any, *, mode: str, world_size: int) -> dict[str, Any]:
    """What both parties of a run must agree on: the config less :data:`LOCAL_FIELDS`, plus
    the clients' mode and the world size."""
    doc = {k: v for k, v in dataclasses.asdict(config).items() if k not in LOCAL_FIELDS}
    return doc | {"clients_mode": mode, "world_size": world_size}


def first_difference(mine: dict[str, Any], theirs: dict[str, Any]) -> str | None:
    """The first field (in ``mine``'s order, then ``theirs``') whose values differ, or None."""
    missing = object()
    for key in [*mine, *(k for k in theirs if k not in mine)]:
        if mine.get(key, missing) != theirs.get(key, missing):
            return key
    return None


def proof(secret: str, role: str, nonce: bytes, prover: int, world_size: int) -> bytes:
    """The answer to ``nonce`` of the party ``prover`` (``role`` server or client)."""
    msg = b"splitpriv/1|" + role.encode() + b"|" + nonce + struct.pack(">qq", prover, world_size)
    return hmac.new(secret.encode(), msg, hashlib.sha256).digest()


def _bytes(t: torch.Tensor) -> bytes:
    return bytes(t.cpu().tolist())


def _tensor(b: bytes) -> torch.Tensor:
    return torch.tensor(list(b), dtype=torch.uint8)


def handshake(spec: DistSpec, peer: int, key: dict[str, Any], *, group: Any = None) -> None:
    """Authenticate the link to ``peer`` and compare the run's :func:`run_key` (module doc).

    Raises:
        AuthError: the peer lacks the secret, answers wrongly, or requires one this side lacks.
        WireError: the peer was started on another run (names the first field that differs).
        PeerError: the peer went silent or closed the link (it may have refused this side).
    """
    ch = DistChannel(peer, HANDSHAKE_SPECS, timeout_s=spec.timeout_s, max_rows=1, group=group)
    me, server = spec.rank, spec.rank == 0
    them = "client rank" if server else "the server, rank"
    who = f"rank {me}: {them} {peer}"
    mine = secrets.token_bytes(32)
    hello = _tensor(bytes([spec.secret is not None]) + mine)
    try:
        if server:
            ch.send_tensor(Code.NONCE, hello)
        got = _bytes(ch.recv_tensor(Code.NONCE))
        if not server:
            ch.send_tensor(Code.NONCE, hello)
        has_secret, nonce = bool(got[0]), got[1:]
        if spec.secret is not None and not has_secret:
            raise AuthError(f"{who} holds no shared secret (--secret / $SPLITPRIV_SECRET): "
                            "refused")
        if spec.secret is None and has_secret:
            raise AuthError(f"{who} requires a shared secret and this side holds none "
                            "(--secret / $SPLITPRIV_SECRET)")
        answer = (proof(spec.secret, "server" if server else "client", nonce, me,
                        spec.world_size) if spec.secret is not None else bytes(32))

        def check_proof() -> None:
            theirs = _bytes(ch.recv_tensor(Code.PROOF))
            if spec.secret is not None and not hmac.compare_digest(
                theirs, proof(spec.secret, "client" if server else "server", mine, peer,
                              spec.world_size)):
                raise AuthError(f"{who} answered the challenge wrongly: it does not hold this "
                                "run's shared secret; refused")

        if server:
            check_proof()
        ch.send_tensor(Code.PROOF, _tensor(answer))
        if not server:
            check_proof()
        doc = json.dumps(key).encode()
        key = json.loads(doc)  # compared as the peer sees it
        if len(doc) > CONFIG_BYTES:
            raise ValueError(f"the run config is {len(doc):,} bytes as JSON, more than "
                             f"{CONFIG_BYTES:,}")
        if server:
            other = _bytes(ch.recv_tensor(Code.CONFIG))
            ch.send_tensor(Code.CONFIG, _tensor(doc))
        else:
            ch.send_tensor(Code.CONFIG, _tensor(doc))
            other = _bytes(ch.recv_tensor(Code.CONFIG))
    except PeerError as exc:
        raise PeerError(f"{exc} (during the handshake: the peer may have refused this side's "
                        "secret or config)") from None
    try:
        theirs_key = json.loads(other.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError(f"{who} sent a config that is not JSON") from None
    if not isinstance(theirs_key, dict):
        raise WireError(f"{who} sent a config that is not a JSON object")
    field = first_difference(key, theirs_key)
    if field is not None:
        raise WireError(
            f"{who} was started on another run: {field} = {theirs_key.get(field)!r} there, "
            f"{key.get(field)!r} here (the first field that differs; give both the same flags)")


__all__ = ["LOCAL_FIELDS", "AuthError", "first_difference", "handshake", "proof", "run_key"]

"""Client and server as separate processes over torch.distributed; one server, K clients.

The parties' code is that of :mod:`splitpriv.parties`; only the channel differs. Modules:

* ``wire``: the message layout (header, codes, the declared shape and dtype of every kind) and
  the errors (:class:`WireError`, :class:`PeerError`);
* ``channel``: :class:`DistChannel`, one party's end of a link, and :func:`select`;
* ``spec``: :class:`DistSpec`, how a process reaches the others (rank 0 the server, 1..K the
  clients), :func:`spec_from_cli`, :func:`init_process_group` (the rendezvous, bound to the
  given address and bounded by the timeout);
* ``handshake``: before any training message, each link authenticates (a shared secret,
  HMAC challenge-response) and compares the run's config (:func:`handshake`, :func:`run_key`);
* ``partition``: each data owner's rows (:class:`ClientData`, :func:`partition_by_record`);
* ``runners``: :func:`run_client` and :func:`run_server` (sequential and SplitFed modes);
* ``launch``: parties as processes on this host (:func:`launch_local`, :func:`run_processes`);
* ``session``: one process of a run into its run directory (:func:`run_distributed`, through
  :mod:`splitpriv.run`).

Bytes are counted as :mod:`splitpriv.channel` counts them (:func:`message_bytes`), on both ends
per message (header, ids and payload) per kind, epoch and phase. The server's channel records what
crossed (both directions) into the server's transcript, from what arrived, so an attack reads
exactly what crossed.
"""

from __future__ import annotations

from splitpriv.channel import HEADER_BYTES, CountingChannel, WireCounter, message_bytes
from splitpriv.distributed.channel import DistChannel, select
from splitpriv.distributed.handshake import AuthError, first_difference, handshake, run_key
from splitpriv.distributed.launch import _party_main, free_port, launch_local, run_processes
from splitpriv.distributed.partition import ClientData, client_share, partition_by_record
from splitpriv.distributed.runners import (
    PartyResult,
    average_,
    pack_client_state,
    run_client,
    run_server,
    unpack_client_state,
)
from splitpriv.distributed.session import party_record, run_distributed
from splitpriv.distributed.spec import DistSpec, init_process_group, spec_from_cli
from splitpriv.distributed.wire import (
    MODES,
    ChannelError,
    Code,
    Header,
    Op,
    PeerError,
    WireError,
    check_header,
    kind_specs,
)

__all__ = [
    "HEADER_BYTES", "MODES", "AuthError", "ChannelError", "ClientData", "Code", "CountingChannel",
    "DistChannel", "DistSpec", "Header", "Op", "PartyResult", "PeerError", "WireCounter",
    "WireError", "_party_main", "average_", "check_header", "client_share", "first_difference",
    "free_port", "handshake", "init_process_group", "kind_specs", "launch_local", "message_bytes",
    "pack_client_state", "partition_by_record", "party_record", "run_client", "run_distributed",
    "run_key", "run_processes", "run_server", "select", "spec_from_cli", "unpack_client_state",
]

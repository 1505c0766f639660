"""One process of a distributed run (``splitpriv train --role ...``), through the run pipeline.

Each party builds what the config asks for with ``splitpriv.run`` (the run's rows, defenses,
topology) and writes its part of the run directory through a :class:`~splitpriv.run.RunDir`, so a
distributed directory is checked like an in-process one: a directory written for another run is
refused, a finished party is not rerun. Client 1 writes config.json, distributed.json,
metrics.jsonl and best.pt (every epoch), weights.pt (client networks) and result.json (last, with
the bytes on its link per epoch); the server writes transcript.npz, weights-server.pt and
server.json (bytes over all links); client k > 1 writes client-k.json. A party's record marks it
finished, as result.json marks the run.

A killed run resumes: every party keeps its state after its last two epochs
(``party-server.pt``, ``party-client-K.pt``; :mod:`splitpriv.distributed.resume`), the server
the transcript's parts and release log beside them; rerun, the parties agree on the latest
epoch all of them hold and go on from there, to the numbers of a run never killed. ``--force``
starts every party afresh (its party file removed).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from splitpriv.channel import Transcript
from splitpriv.distributed.partition import client_share
from splitpriv.distributed.resume import PartyCheckpoints
from splitpriv.distributed.runners import run_client, run_server
from splitpriv.distributed.spec import DistSpec
from splitpriv.io import resolve_device
from splitpriv.run import (
    ATTACKS,
    BEST,
    CHECKPOINT,
    RESULT,
    TRANSCRIPT,
    TRANSCRIPT_PARTS,
    WEIGHTS,
    RunDir,
    TrainConfig,
    build_behaviour,
    build_defenses,
    build_run_data,
    prepare_defenses,
    resolve_topology,
    result_doc,
)


def party_checkpoints(path: Path, spec: DistSpec) -> PartyCheckpoints:
    """This party's checkpoint file in the run directory."""
    name = "server" if spec.rank == 0 else f"client-{spec.rank}"
    return PartyCheckpoints(path / f"party-{name}.pt")


def party_record(spec: DistSpec) -> str:
    """The file that marks this party finished: result.json for client 1 (the run's result),
    server.json for the server, client-k.json for client k > 1."""
    if spec.rank == 0:
        return "server.json"
    return RESULT if spec.rank == 1 else f"client-{spec.rank}.json"


def run_distributed(
    config: TrainConfig, out_dir: str | Path, spec: DistSpec, *, mode: str = "sequential",
    progress: bool = True, force: bool = False,
) -> dict[str, Any]:
    """Run this process's party of a distributed run into ``out_dir`` (module docstring).

    Returns the party's record (client 1: the result dict); a party already finished in
    ``out_dir`` returns its record without joining the others, unless ``force``.

    Raises:
        ValueError: ``out_dir`` holds another run (unless ``force``), or a bad config.
    """
    with RunDir(out_dir, config, force=force, marker=party_record(spec)) as run_dir:
        done = run_dir.finished()
        if done is not None:
            return done
        checkpoints = party_checkpoints(run_dir.path, spec)
        fresh = force or not checkpoints.path.exists()
        defenses = build_defenses(config)  # bad parameters fail before anything is written
        behaviour = build_behaviour(config).report()  # its name, protocol and options
        device = resolve_device(config.device)
        info = {"mode": mode, "clients": spec.n_clients, "backend": spec.backend,
                "world_size": spec.world_size}
        if spec.role == "server":
            run_dir.start(resumable=False, stale=(
                (TRANSCRIPT, TRANSCRIPT_PARTS, checkpoints.path.name) if fresh else ()))
            transcript = Transcript(policy=config.record_policy())

            def restore(epoch: int) -> None:
                if epoch == 0:  # afresh: no part of an earlier attempt is merged later
                    shutil.rmtree(run_dir.file(TRANSCRIPT_PARTS), ignore_errors=True)
                else:
                    run_dir.restore_releases(transcript, epoch)

            def keep(epoch: int, moment: str) -> None:
                if moment == "round":  # every release of the epoch is in: the log's state
                    run_dir.save_releases(transcript, epoch)
                else:  # client 1 evaluated the epoch: its messages
                    run_dir.save_part(transcript, epoch, releases=False)

            res = run_server(config, spec, mode=mode, device=device, transcript=transcript,
                             checkpoints=checkpoints, on_resume=restore, on_checkpoint=keep)
            run_dir.save_transcript(res.transcript)
            run_dir.save_weights(res.state, "weights-server.pt")
            return run_dir.finish({"role": "server", **info, "server": behaviour,
                                   "history": res.history, "wire": res.wire})
        data = build_run_data(config, device)
        prepare_defenses(defenses, data, config)
        share = client_share(data, spec.rank, spec.n_clients)
        if spec.rank != 1:
            run_dir.start(resumable=False, stale=(checkpoints.path.name,) if fresh else ())
            res = run_client(config, spec, share, mode=mode, progress=progress,
                             checkpoints=checkpoints)
            return run_dir.finish({"role": "client", "rank": spec.rank, **info,
                                   "n_train": len(share.y_train), "history": res.history,
                                   "wire": res.wire})
        run_dir.start(resumable=False, stale=(CHECKPOINT, BEST, WEIGHTS, ATTACKS,
                                              checkpoints.path.name) if fresh
                      else (CHECKPOINT, WEIGHTS, ATTACKS))
        run_dir.write_record("distributed.json", {**info, "master_addr": spec.master_addr,
                                                  "master_port": spec.master_port})

        def resume(epoch: int, history: list[dict[str, Any]]) -> None:
            if epoch == 0:
                run_dir.file(BEST).unlink(missing_ok=True)  # an earlier attempt's
            run_dir.resume_selection(history)

        res = run_client(config, spec, share, mode=mode, progress=progress,
                         on_epoch=run_dir.save_epoch, checkpoints=checkpoints, on_resume=resume)
        run_dir.save_weights(res.state)
        rows = {"n_train_client1": len(share.y_train), "n_val": len(data.y_val),
                "n_test": len(data.y_test)}
        return run_dir.finish(result_doc(
            config, res.history, rows=rows, device=device, card=data.card,
            topology=resolve_topology(config, defenses), defenses=res.defenses, distributed=info,
            wire=res.wire,
        ))


__all__ = ["party_record", "run_distributed"]

"""SDAR and FORA on a small real run: each beats the mean-beat prior on the undefended run's
releases and is at chance where the releases are pure noise; public beats are the pool's unused
beats, never a victim's; bad input is a one-line error."""

from __future__ import annotations

import pytest
import torch

from attacks import AttackInputError, build_attack
from attacks.runs import knowledge_for, load_run, parse_aux, weights_transcript
from attacks.simulator import mk_mmd
from splitpriv.io import torch_threads

#: small budgets: 400 simulator steps of 64 beats, 300 public beats, 150 victims
FAST = {"steps": "400", "decoder_epochs": "15", "max_victims": "150"}


@pytest.fixture(scope="module")
def small(small_run_dir):
    run = load_run(small_run_dir)
    aux = parse_aux("public:300", run, phase="train", seed=0)
    return run, aux, weights_transcript(run, "train"), run.truth("train")


def attack(name, run, aux, transcript, truth, **extra):
    with torch_threads(1):
        return build_attack(name, FAST | extra)(transcript, knowledge_for(run, aux), truth)


def test_public_beats_are_unused_pool_beats(small):
    run, aux, _, _ = small
    assert not aux.paired and aux.ids is None and len(aux.x) == 300
    # every public beat is a pool beat no split uses: none equals a beat of the run
    seen = torch.cat([run.x[p] for p in ("train", "val", "test")]).reshape(-1, 128)
    d = torch.cdist(aux.x.reshape(300, -1), seen).min(1).values
    assert float(d.min()) > 0


@pytest.mark.parametrize("name", ["sdar", "fora"])
def test_beats_the_mean_beat_prior_and_is_at_chance_on_noise(small, name, noise_transcript):
    run, aux, transcript, truth = small
    s = attack(name, run, aux, transcript, truth).summary
    link, prior = s["linkage"]["k10"], s["baselines"]["mean_beat"]["linkage"]["k10"]
    # re-identification among 10 same-class decoys: chance 1/11; the prior sits there
    assert link["ci_low"] > link["chance"] and link["accuracy"] > prior["ci_high"]
    assert s["metrics"]["pearson"]["median"] > s["baselines"]["mean_beat"]["metrics"][
        "pearson"]["median"]
    noise = attack(name, run, aux, noise_transcript(transcript), truth,
                   steps="200").summary["linkage"]["k10"]
    # nothing of the beats crossed: its 95% interval holds chance, far below the clean attack
    assert noise["ci_low"] <= noise["chance"] and noise["accuracy"] < link["ci_low"]


def test_sdar_ushape_trains_a_simulated_head(small, pool_dirs, tmp_path):
    from splitpriv.run import TrainConfig, run_training

    mitdb, cache = pool_dirs
    config = TrainConfig(protocol="paper-unique", epochs=2, topology="ushape", train_subset=600,
                         test_subset=100, mitdb_dir=str(mitdb), cache_dir=str(cache), threads=1)
    with torch_threads(1):
        run_training(config, tmp_path / "u", progress=False)
    run = load_run(tmp_path / "u")
    aux = parse_aux("public:300", run, phase="train", seed=0)
    result = attack("sdar", run, aux, weights_transcript(run, "train"), run.truth("train"))
    assert "ushape" in result.notes[0]
    link = result.summary["linkage"]["k10"]
    assert link["ci_low"] > link["chance"]


def test_mk_mmd_separates_distributions():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 4, 8, generator=gen), torch.randn(200, 4, 8, generator=gen)
    # two samples of one distribution: MMD near 0; shifted by 1 in every coordinate: large
    assert abs(float(mk_mmd(a, b))) < 0.05 < float(mk_mmd(a, b + 1.0))


def test_bad_input_is_one_line(small):
    run, aux, transcript, truth = small
    with pytest.raises(ValueError, match="public:0"):
        parse_aux("public:0", run, phase="train")
    with pytest.raises(ValueError, match="beats of"):
        parse_aux("public:10000000", run, phase="train")
    with pytest.raises(AttackInputError, match="needs the attacker's 'aux'"):
        build_attack("fora", FAST)(transcript, knowledge_for(run, None), truth)
    few = parse_aux("public:5", run, phase="train")
    with pytest.raises(AttackInputError, match="5 public beats, need 8"):
        attack("sdar", run, few, transcript, truth)
    with pytest.raises(ValueError, match="steps"):
        build_attack("sdar", {"steps": "0"})
    # a paired attack given public beats: no releases to pair them with
    with pytest.raises(AttackInputError, match="neither activations nor transcript ids"):
        build_attack("decoder", {"epochs": "1", "max_victims": "20"})(
            transcript, knowledge_for(run, aux), truth)

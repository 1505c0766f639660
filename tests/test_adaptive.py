"""The adaptive attacker on small real runs: a shadow run with the run's recipe and defenses
(its own seed), aligned and inverted; it beats the mean-beat prior undefended, is at chance on
pure-noise releases, and as a candidate of ``strongest`` the pick on held-out aux beats is never
weaker than it nor than the non-adaptive decoder."""

from __future__ import annotations

import pytest
import torch

from attacks import AttackInputError, build_attack
from attacks.adaptive import shadow_specs, train_shadow
from attacks.runs import knowledge_for, load_run, parse_aux, weights_transcript
from splitpriv.defense import DefenseSpec
from splitpriv.io import torch_threads

FAST = {"steps": "300", "decoder_epochs": "15", "max_victims": "150", "shadow_epochs": "3"}


@pytest.fixture(scope="module")
def small(small_run_dir):
    run = load_run(small_run_dir)
    return run, weights_transcript(run, "train"), run.truth("train")


@pytest.fixture(scope="module")
def nopeek_run(pool_dirs, tmp_path_factory):
    from splitpriv.run import TrainConfig, run_training

    mitdb, cache = pool_dirs
    out = tmp_path_factory.mktemp("runs") / "nopeek"
    config = TrainConfig(protocol="paper-unique", epochs=3, train_subset=800, test_subset=100,
                         defenses=["nopeek:alpha=1"], record_epochs="last", threads=1,
                         mitdb_dir=str(mitdb), cache_dir=str(cache))
    with torch_threads(1):
        run_training(config, out, progress=False)
    return load_run(out)


def run_adaptive(run, aux_spec, transcript, truth, **extra):
    aux = parse_aux(aux_spec, run, phase="train", seed=0)
    with torch_threads(1):
        return build_attack("adaptive", FAST | extra)(transcript, knowledge_for(run, aux), truth)


def test_beats_the_prior_and_is_at_chance_on_noise(small, noise_transcript):
    run, transcript, truth = small
    s = run_adaptive(run, "public:300", transcript, truth).summary
    link, prior = s["linkage"]["k10"], s["baselines"]["mean_beat"]["linkage"]["k10"]
    assert link["ci_low"] > link["chance"] and link["accuracy"] > prior["ci_high"]
    noise = run_adaptive(run, "public:300", noise_transcript(transcript), truth).summary
    assert noise["linkage"]["k10"]["ci_low"] <= noise["linkage"]["k10"]["chance"]


def test_shadow_uses_the_recipe_and_its_own_randomness(nopeek_run):
    # the spec's seed is dropped: the shadow draws the defense's randomness itself
    seedless = shadow_specs([DefenseSpec.parse("dp:mode=paper,epsilon=3,seed=5")])
    assert seedless == [DefenseSpec.parse("dp:mode=paper,epsilon=3")]
    run = nopeek_run
    x, y = run.x["train"][:200], run.y["train"][:200]
    net, defenses = train_shadow(run.config, x, y, None, shape=(run.input_shape, 5), seed=0,
                                 epochs=1, device=torch.device("cpu"))
    assert [d.name for d in defenses] == ["nopeek"]
    # another client than the victims' (another seed, other data): its weights differ
    victim = run.weights["client"]
    assert not torch.equal(net.state_dict()["layers.0.weight"], victim["layers.0.weight"])


def test_strongest_pick_is_never_weaker_than_adaptive_or_decoder(nopeek_run):
    run = nopeek_run
    aux = parse_aux("train:0.25", run, phase="train", seed=0)
    opts = {"decoder_epochs": "10", "extra_steps": "200", "shadow_epochs": "2",
            "max_victims": "150", "extra": "adaptive", "matchers": ""}
    with torch_threads(1):
        s = build_attack("strongest", opts)(run.transcript, knowledge_for(run, aux),
                                            run.truth("train")).summary
    cands = s["selection"]["candidates"]
    assert "adaptive" in cands and s["skipped"] == {}

    def held(name):
        return cands[name]["heldout"]["linkage_k10"]

    above = [n for n in cands if held(n)["ci_low"] > held(n)["chance"]]
    winner = s["winner"]
    # the pick: the best held-out linkage among those above chance, else the lowest held-out MSE
    if above:
        assert winner in above
        for name in ("adaptive", "decoder"):
            assert held(winner)["advantage"] >= held(name)["advantage"] or name not in above
    else:
        assert cands[winner]["heldout"]["mse"] <= min(cands[n]["heldout"]["mse"]
                                                      for n in ("adaptive", "decoder"))


def test_a_defense_that_cannot_be_simulated(nopeek_run, monkeypatch):
    from defenses.nopeek import NoPeek

    monkeypatch.setattr(NoPeek, "simulable", False)
    run = nopeek_run
    with pytest.raises(AttackInputError, match="cannot be simulated"):
        run_adaptive(run, "public:100", run.transcript, run.truth("train"))
    # strongest skips the candidate and says why
    aux = parse_aux("train:0.2", run, phase="train", seed=0)
    with torch_threads(1):
        s = build_attack("strongest", {"decoder_epochs": "2", "max_victims": "50",
                                       "extra": "adaptive", "matchers": "",
                                       "candidates": "ridge"})(
            run.transcript, knowledge_for(run, aux), run.truth("train")).summary
    assert "cannot be simulated" in s["skipped"]["adaptive"]
    assert "adaptive" not in s["selection"]["candidates"]


def test_bad_input(small):
    run, transcript, truth = small
    with pytest.raises(ValueError, match="draws"):
        build_attack("adaptive", {"draws": "0"})
    aux = parse_aux("public:50", run, phase="train", seed=0)
    knowledge = knowledge_for(run, aux)
    knowledge.recipe = None
    with pytest.raises(AttackInputError, match="needs the attacker's 'recipe'"):
        build_attack("adaptive", FAST)(transcript, knowledge, truth)

"""Typed specs parsed once: a run's defenses (:class:`splitpriv.defense.DefenseSpec`, stored as
typed objects in config.json) and auxiliary data with explicit kinds
(:class:`splitpriv.aux.AuxSpec`, read by the run's server behaviours and by the attacks)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from splitpriv.aux import AuxSpec
from splitpriv.defense import DefenseSpec
from splitpriv.run import TrainConfig


def test_a_defense_spec_is_parsed_once_into_typed_options_whatever_its_spelling():
    a = DefenseSpec.parse("dp:epsilon=3,mode=paper")
    b = DefenseSpec.parse("dp:mode=paper,epsilon=3.0,mechanism=laplace")  # a default given
    c = DefenseSpec.parse({"name": "dp", "options": {"mode": "paper", "epsilon": 3}})
    assert a == b == c and hash(a) == hash(c)
    assert a.options["epsilon"] == 3.0 and isinstance(a.options["epsilon"], float)
    assert a.options["mode"] == "paper" and a.cls.__name__ == "PaperDP"
    # the canonical text: the family's variant, then the options that differ from the defaults
    assert str(a) == "dp:mode=paper,epsilon=3" and DefenseSpec.parse(str(a)) == a
    assert str(DefenseSpec.parse("nopeek")) == "nopeek"
    assert DefenseSpec.parse("dp:mode=paper,epsilon=4") != a


@pytest.mark.parametrize("bad,match", [
    ("dp:foo=1", "unknown parameter"),
    ("nosuch", "unknown defense 'nosuch'"),
    ({"name": "dp", "extra": 1}, "expected a spec"),
    (3, "expected a spec"),
    ("dp:mode=paper,epsilon=x", "epsilon"),
])
def test_a_bad_defense_spec_is_one_line_naming_it(bad, match):
    with pytest.raises(ValueError, match=match):
        DefenseSpec.parse(bad)


def test_config_json_stores_typed_defenses_and_reads_older_text_specs(tmp_path):
    config = TrainConfig(defenses=["ushape", "dp:mode=paper,epsilon=3"])
    doc = dataclasses.asdict(config)
    assert doc["defenses"][1] == {"name": "dp", "options": {
        "mode": "paper", "mechanism": "laplace", "test_noise": True, "seed": None,
        "epsilon": 3.0, "eval_batch": 32}}
    new, old = tmp_path / "new.json", tmp_path / "old.json"
    new.write_text(json.dumps(doc))
    old.write_text(json.dumps({**doc, "defenses": ["ushape", "dp:epsilon=3,mode=paper"]}))
    for path in (new, old):  # an older run directory is still the same run
        assert TrainConfig.load(path).rerun_key() == config.rerun_key()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**doc, "defenses": [{"name": "dp", "options": {"epsilon": -1}}]}))
    with pytest.raises(ValueError, match=f"{bad}: defense 'dp'"):
        TrainConfig.load(bad)


def test_aux_specs_have_explicit_kinds_and_train_reads_as_own():
    assert AuxSpec.parse("own:0.1") == AuxSpec.parse("train:0.1") == AuxSpec("own", 0.1)
    assert AuxSpec.parse("public:50") == AuxSpec("public", 50.0)
    assert AuxSpec.parse("records:101;100,100") == AuxSpec("records", records=(100, 101))
    assert AuxSpec.parse("enrol:0.3") == AuxSpec("enrol", 0.3)
    assert AuxSpec.parse(None) is None and AuxSpec.parse("none") is None
    assert AuxSpec("own", 0.1).count(1000) == 100 and AuxSpec("public", 50).count(1000) == 50
    assert str(AuxSpec.parse("train:0.1")) == "own:0.1"


@pytest.mark.parametrize("text,kinds,match", [
    ("test:0.1", ("own", "public"), "expected own:F|N, public:F|N"),
    ("own:0", ("own",), "a fraction in \\(0, 1\\) or a count >= 1"),
    ("own:2.5", ("own",), "a fraction in \\(0, 1\\) or a whole count"),
    ("records:a,b", ("records",), "expected records:R1,R2"),
    ("enrol:1", ("enrol",), "enrol:F with F in \\(0, 1\\)"),
    ("own:0.1", ("public", "records"), "a server holds no client rows"),
])
def test_a_bad_aux_spec_is_one_line(text, kinds, match):
    with pytest.raises(ValueError, match=match):
        AuxSpec.parse(text, "--aux", kinds)


def test_public_rows_are_unused_pool_beats_drawn_like_the_run_draws_them():
    records = np.repeat(np.arange(100, 110), 20)  # a pool of 200 beats, 20 per record
    used = np.concatenate([np.arange(0, 200, 3), [-1, -1]])  # every third beat is the run's
    spec = AuxSpec.parse("public:0.5")
    rows = spec.public_rows(records, used, n_train=60, seed=0, where="aux")
    assert len(rows) == 30 and not np.isin(rows, used).any()
    assert np.array_equal(rows, np.sort(np.random.default_rng(0).choice(
        np.setdiff1d(np.arange(200), used), 30, replace=False)))  # the seeded draw, reproducible
    rec = AuxSpec.parse("records:101").public_rows(records, used, 60, seed=0, where="aux")
    assert set(records[rec]) == {101} and len(rec) == 20 - 7  # 7 of record 101's beats are used
    with pytest.raises(ValueError, match="beats of 133 unused"):
        AuxSpec.parse("public:500").public_rows(records, used, 60, seed=0, where="aux")

"""The attacks' part of the ``splitpriv`` command line: ``attack``, ``audit``, ``list attacks``
and ``attack NAME --help``.

The core CLI (``splitpriv/cli.py``) never imports its plug-ins: it finds this module through the
installed entry points (group ``splitpriv.cli``) and calls :func:`add_commands`,
:func:`catalogs` and :func:`command_help`. This module stays light (the attacks themselves are
imported by the commands that run them), so ``splitpriv train`` pays nothing for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from splitpriv.options import describe_fields, first_paragraph, parse_pairs


def cmd_attack(args: argparse.Namespace) -> int:
    from attacks.cli import run_attack_cli

    run_attack_cli(args.name, args.run, args.aux, parse_pairs(args.option, "--option"))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    if args.one_run is not None:
        from attacks.audit_one_run import one_run_cli

        one_run_cli(args.run, canaries=args.one_run, guesses=args.guesses, out=args.out,
                    seed=args.seed, confidence=args.confidence, kind=args.canaries,
                    sampling=args.sampling)
        return 0
    from attacks.audit import audit_cli

    audit_cli(args.run, aux=args.aux, out=args.out, victims=args.victims, seed=args.seed,
              confidence=args.confidence)
    return 0


class _AttackHelp(argparse.HelpFormatter):
    """Lists the registered attacks in ``splitpriv attack --help`` (the registry is imported only
    when the help is shown)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest == "name":
            from attacks.registry import load_builtin

            return "the attack: " + ", ".join(sorted(load_builtin()))
        return super()._get_help_string(action)

    def _split_lines(self, text: str, width: int) -> list[str]:
        # never break a hyphenated attack name (label-strongest) across lines
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def add_commands(sub: Any) -> None:
    """``splitpriv attack`` and ``splitpriv audit``."""
    att = sub.add_parser(
        "attack", help="run an attack on a saved run; writes DIR/attacks/NAME.json",
        formatter_class=_AttackHelp,
        description="splitpriv attack NAME --help: the attack's options, the knowledge it needs "
                    "and its cost",
    )
    att.add_argument("name", help="the attack (the registered names)")
    att.add_argument("--run", required=True, help="run directory")
    att.add_argument("--aux", default=None,
                     help="attacker's auxiliary beats: own:F | own:N | public:F | "
                     "records:R1,R2,... | enrol:F (identity's default: enrol:0.3)")
    att.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                     help="attack option, repeatable (max_victims=2000, phase=test, ...)")
    att.set_defaults(func=cmd_attack)

    aud = sub.add_parser("audit", help="audit a run's privacy: empirical epsilon lower bounds, "
                         "the claim's bounds beside the attacks; writes DIR/attacks/audit.json")
    aud.add_argument("--run", required=True, help="run directory")
    aud.add_argument("--aux", default=None,
                     help="attacker's auxiliary beats (own:F | own:N | public:F "
                     "| records:R1,...): run the strongest attack first where the run has none")
    aud.add_argument("--out", default=None, help="where to write the audit (default "
                     "DIR/attacks/audit.json)")
    aud.add_argument("--victims", type=int, default=1000, help="test beats of the test-time audit")
    aud.add_argument("--seed", type=int, default=0)
    aud.add_argument("--confidence", type=float, default=0.95,
                     help="one-sided confidence of every lower bound")
    aud.add_argument("--one-run", type=int, default=None, metavar="M",
                     help="instead: the one-run audit of client DP-SGD's weight claim (Steinke "
                     "et al. 2023), M canaries in a fresh training run of the run's config; "
                     "writes DIR/attacks/audit_one_run.json")
    aud.add_argument("--guesses", type=int, default=None, metavar="R",
                     help="with --one-run: canaries guessed, half in, half out (default M/5)")
    aud.add_argument("--canaries", default="gradient", metavar="KIND",
                     help="with --one-run: gradient (canary gradients of norm C in the clipped "
                     "sums; reads every noisy sum) or input (canary beats among the training "
                     "beats; reads the client's weights)")
    aud.add_argument("--sampling", default="poisson", metavar="HOW",
                     help="with --one-run --canaries gradient: poisson (each step with the "
                     "accountant's rate, what the claim covers) or shuffle (once per epoch, as "
                     "the trainer draws beats)")
    aud.set_defaults(func=cmd_audit)


def attacks_catalog() -> str:
    """``splitpriv list attacks``: every registered attack, the knowledge it needs and its own
    options (read from its Config)."""
    from attacks.base import CommonConfig
    from attacks.cli import KNOWLEDGE_WORDS
    from attacks.registry import build_attack, load_builtin

    def default(f: dataclasses.Field) -> object:
        return (f.default_factory() if f.default_factory is not dataclasses.MISSING
                else f.default)

    common = {f.name: default(f) for f in dataclasses.fields(CommonConfig)}
    out = ["options every attack takes (-o KEY=VALUE):", describe_fields(CommonConfig), ""]
    for name in sorted(load_builtin()):
        attack = build_attack(name, {})
        needs = ", ".join(f"{k}{'' if k in attack.requires else ' (optional)'}"
                          for k in attack.uses) or "nothing (an evaluator's measurement)"
        own = [f.name for f in dataclasses.fields(attack.Config)  # its own, or its default
               if f.name not in common or common[f.name] != default(f)]
        out += [f"{name}  (needs: {needs})", first_paragraph(type(attack)),
                describe_fields(attack.Config, only=own) if own else "  (no own options)", ""]
    out += ["knowledge: " + "; ".join(f"{k}: {v}" for k, v in KNOWLEDGE_WORDS.items()),
            "splitpriv attack NAME --help: one attack's options, knowledge and cost"]
    return "\n".join(out)


def catalogs() -> dict[str, Callable[[], str]]:
    """What ``splitpriv list`` lists from this package."""
    return {"attacks": attacks_catalog}


def command_help(argv: Sequence[str]) -> str | None:
    """``splitpriv attack NAME --help``: the attack's own help (None: another command).

    Raises:
        ValueError: an unknown attack.
    """
    if len(argv) >= 3 and argv[0] == "attack" and not argv[1].startswith("-") and (
            {"-h", "--help"} & set(argv)):
        from attacks.cli import attack_help

        return attack_help(argv[1])
    return None


__all__ = ["add_commands", "attacks_catalog", "catalogs", "command_help"]


def attack_run_dir(name: str, run_dir: str, aux: str | None,
                   options: dict[str, str]) -> dict[str, Any]:
    """The Python API's attack (``splitpriv.attack``): as ``splitpriv attack``, quietly."""
    from attacks.cli import run_attack_cli

    return run_attack_cli(name, run_dir, aux, options, echo=False)

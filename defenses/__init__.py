"""Defense modules that plug into the split trainer at the cut (see ``splitpriv.defense``).

A defense is a class registered by name with a typed dataclass config; ``build_defense`` turns a
spec ``name[:key=value,...]`` into an instance, checking every parameter before training starts.

Built-in defenses (each documents its parameters in its ``Config``):

* ``dp`` (:mod:`defenses.dp`): noise on the activations; ``mode=paper`` (``PaperDP``) reproduces
  Abuadbba et al. 2020 and claims no guarantee, ``mode=formal`` (``FormalDP``) clips, calibrates
  over the run's epochs and accounts. The spec's ``mode`` picks the class (each has its own
  ``Config``).
* ``ushape`` (:mod:`defenses.ushape`): U-shaped topology, labels and head stay on the client.
* ``nopeek`` (:mod:`defenses.nopeek`): client loss ``alpha * dCor(inputs, activations)``.
* ``dpsgd`` (:mod:`defenses.dpsgd`): DP-SGD (Opacus) on the client's layers.
* ``dpsgd-patient`` (:mod:`defenses.dpsgd_patient`): the same with one patient as the privacy
  unit (per-patient clipping, patients Poisson-sampled per step).
* ``labeldp`` (:mod:`defenses.labeldp`): randomised response on the labels sent (vanilla), formal
  label-DP epsilon per beat's label; ``prior=true`` is RR-with-prior (Ghazi et al. 2021).
* ``maxnorm`` (:mod:`defenses.maxnorm`): Gaussian noise raising every output gradient's expected
  squared norm to the batch's largest (U-shape; Li et al. 2022).
* ``marvell`` (:mod:`defenses.marvell`): noise bounding every one-vs-rest label AUC under the
  paper's Gaussian model, ``auc_bound`` (U-shape; Li et al. 2022, simplified).
* ``mid`` (:mod:`defenses.mid`): a variational information bottleneck at the cut, trained by the
  client, KL weight ``lam`` (Zou et al. 2023; VFLAIR's and SecretFlow's MID).
* ``ressfl`` (:mod:`defenses.ressfl`): attacker-aware training, the client against a simulated
  inversion decoder it trains on its own beats, strength ``lam``, optional ``noise`` (ResSFL, Li
  et al. CVPR 2022; DeepObfuscator).
* ``shredder`` (:mod:`defenses.shredder`): learned Laplace noise distributions at the cut,
  initial ``scale``, noise-magnitude weight ``lam`` (Mireshghallah et al. ASPLOS 2020).
* ``mixup`` (:mod:`defenses.mixup`): training releases mixed over k beats of the batch,
  Dirichlet(``alpha``) coefficients, one partner's label drawn by its coefficient (SecretFlow's SL
  mixup; InstaHide-style).

None of the last four claims a formal guarantee. The learned ones (``mid``, ``ressfl``,
``shredder``) share :mod:`defenses.learned`: their module trains with the client and is kept in
the run's checkpoint.pt, from which an attack that queries the client loads it.

Accounting helpers shared by ``dp`` and ``dpsgd`` live in :mod:`defenses.accounting`. Every
defense's ``report()`` is a :class:`splitpriv.defense.PrivacyClaim`.
"""

from defenses.registry import DEFENSES, build_defense, parse_spec, register

__all__ = ["DEFENSES", "build_defense", "parse_spec", "register"]

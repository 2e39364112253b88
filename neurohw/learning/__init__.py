"""Learners: EP (three estimators), C-EP, C-VF, BPTT, BP and DTP (DTP, DRL, L-DRL feedback) behind one interface (`Learner`)."""

from __future__ import annotations

from neurohw.core.registry import Registry
from neurohw.learning.base import BetaSampler, Learner
from neurohw.learning.bptt import BP, BPTT
from neurohw.learning.cep import CEP, CVF, set_initial_angle, weight_angles_deg
from neurohw.learning.dtp import DTP
from neurohw.learning.ep import EP


def _ep(cfg, precision):
    return EP(cfg.beta, cfg.T_free, cfg.T_nudge, cfg.estimator, seed=cfg.seed, T_eval=cfg.T_eval, relaxation=cfg.relaxation,
              precision=precision)


def _cep(cfg, precision):
    return CEP(cfg.beta, cfg.T_free, cfg.T_nudge, cfg.estimator, seed=cfg.seed, T_eval=cfg.T_eval, relaxation=cfg.relaxation,
               precision=precision)


def _cvf(cfg, precision):
    return CVF(
        cfg.beta, cfg.T_free, cfg.T_nudge, cfg.estimator, seed=cfg.seed, T_eval=cfg.T_eval, rule=cfg.vf_rule,
        relaxation=cfg.relaxation, precision=precision, feedback_ratio=cfg.feedback_lr_ratio,
    )


def _bptt(cfg, precision):
    return BPTT(cfg.T_free, T_backprop=cfg.T_backprop, T_eval=cfg.T_eval)


def _bp(cfg, precision):
    return BP()


def _dtp(cfg, precision):
    return DTP(
        cfg.beta, cfg.algorithm, fb_iters=cfg.fb_iters, fb_noise=cfg.fb_noise, fb_lrs=cfg.fb_lrs,
        fb_momentum=cfg.fb_momentum, fb_pool_indices=cfg.fb_pool_indices, seed=cfg.seed,
    )


LEARNERS: Registry = Registry("learner")
for _name, _factory in (
    ("ep", _ep), ("cep", _cep), ("cvf", _cvf), ("bptt", _bptt), ("bp", _bp), ("dtp", _dtp), ("drl", _dtp), ("ldrl", _dtp)
):
    LEARNERS.register(_name, _factory)


def build_learner(cfg, precision: str = "fp32") -> Learner:
    """The learner of a LearnerConfig (`precision`: train.precision, used by ep, cep and cvf)."""
    return LEARNERS.get(cfg.algorithm, "learner.algorithm")(cfg, precision)


__all__ = [
    "BP", "BPTT", "CEP", "CVF", "DTP", "EP", "BetaSampler", "LEARNERS", "Learner",
    "build_learner", "set_initial_angle", "weight_angles_deg",
]

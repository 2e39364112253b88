"""`neurohw export | inspect | validate | import-conductances`: from a run directory to a device file.

`export` takes the net of the epoch selected on validation (`best.pt`; `checkpoint.pt` if the run has
no validation split), with its config and results, optionally maps it onto a device profile
(sims/*.toml), and writes the HDF5 file of docs/hdf5.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from neurohw.config import load_config
from neurohw.data import DATASETS
from neurohw.errors import CheckpointError, ConfigError
from neurohw.io.hdf5 import load_spec, save_spec
from neurohw.nets.convert import to_spec
from neurohw.spec import NetworkSpec


def spec_from_run(run_dir: str | Path) -> NetworkSpec:
    """The NetworkSpec of a finished (or interrupted) training run."""
    from neurohw.train import RunDir, build_model

    run = RunDir(run_dir)
    if not run.config.exists():
        raise CheckpointError(f"'{run.root}' is not a run directory (no config.toml)")
    cfg = load_config(run.config)
    weights_file = run.best if run.best.exists() else run.checkpoint
    if not weights_file.exists():
        raise CheckpointError(f"run '{run.root}' has neither best.pt nor checkpoint.pt")
    try:
        saved = torch.load(weights_file, map_location="cpu", weights_only=True)
        state = saved["net"]
    except Exception as e:
        raise CheckpointError(f"'{weights_file}' is corrupt or unreadable ({type(e).__name__})") from None
    prep = (saved.get("data") or {}).get("preprocessing")
    record: dict = {}
    if prep:  # the run recorded its data (every run since the dataset loaders)
        shape, mean, std, scale = tuple(prep["input_shape"]), tuple(prep["mean"]), tuple(prep["std"]), prep["pixel_scale"]
        fingerprint = saved["data"].get("fingerprint", {})
        record = {**fingerprint, **{k: prep[k] for k in ("image_size", "resize", "normalisation", "flat") if k in prep}}
    elif cfg.data.dataset in DATASETS:  # a run from before: the named dataset's defaults, as it trained with
        info = DATASETS[cfg.data.dataset]
        shape, mean, std, scale = info.input_shape, tuple(cfg.data.mean) or info.mean, tuple(cfg.data.std) or info.std, 255.0
        record = {"dataset": cfg.data.dataset}
    else:
        raise CheckpointError(f"'{weights_file}' records no preprocessing of its data ('{cfg.data.dataset}'); retrain the run")
    last = [k for k in state if k.endswith(".weight") and not k.endswith("weight_backward")][-1]
    net = build_model(cfg, shape, int(state[last].shape[0]))
    net.load_state_dict(state)
    summary = json.loads(run.summary.read_text()) if run.summary.exists() else {}
    nan = math.nan
    return to_spec(
        net,
        T_free=cfg.learner.T_eval or cfg.learner.T_free,
        T_nudge=cfg.learner.T_nudge,
        relaxation=cfg.learner.relaxation,
        beta=cfg.learner.beta,
        image_shape=tuple(int(d) for d in shape),
        input_mean=tuple(float(m) for m in mean),
        input_std=tuple(float(s) for s in std),
        pixel_scale=float(scale),
        dataset=record,
        config_toml=run.config.read_text(),
        algorithm=cfg.learner.algorithm,
        test_error=float(summary.get("test_error", nan)),
        val_error=float(summary.get("val_error", nan)),
        seed=cfg.train.seed,
        provenance={"run": str(run.root), "weights": weights_file.name},
    )


def export_run(run_dir: str | Path, out: str | Path | None = None, device_profile: str | Path | None = None,
               overwrite: bool = False) -> Path:
    """Write the run's network (mapped onto `device_profile` if given) to `out` (default <run>/network.h5);
    an existing `out` is replaced only with `overwrite` (refused before any work, as `train` refuses to
    replace a run)."""
    target = Path(out) if out else Path(run_dir) / "network.h5"
    if target.exists() and not overwrite:
        raise ConfigError(f"'{target}' already exists: pass --overwrite to replace it, or another --out")
    spec = spec_from_run(run_dir)
    if device_profile is not None:
        from neurohw.devices.mapping import load_profile, map_spec

        spec = map_spec(spec, load_profile(device_profile))
    return save_spec(spec, target)


def inspect_text(path: str | Path) -> str:
    """A human-readable summary of a network file: provenance, layers, shapes, conductance ranges."""
    spec = load_spec(path)
    pct = lambda e: "n/a" if not math.isfinite(e) else f"{100 * e:.2f} %"
    lines = [
        f"{path}: neurohw network file, format version 1 (written by neurohw {spec.provenance.get('neurohw_version')}, "
        f"{spec.provenance.get('created_utc')})",
        f"  trained with {spec.algorithm or '?'} (seed {spec.seed}): validation error {pct(spec.val_error)}, test error {pct(spec.test_error)}",
        f"  {spec.architecture} net, activation {spec.activation}, cost {spec.cost}, nudge {spec.nudge}, "
        f"T_free {spec.T_free}, T_nudge {spec.T_nudge}, beta {spec.beta:g}",
        f"  input {spec.input_shape} from images {spec.image_shape}: ({'pixel/255' if spec.pixel_scale == 255.0 else f'x/{spec.pixel_scale:g}'}"
        f" − {list(spec.input_mean)}) / {list(spec.input_std)}"
        + (f"; data: {spec.dataset.get('dataset')} '{spec.dataset.get('path', '')}' sha256 {str(spec.dataset.get('sha256', ''))[:12]}…"
           if spec.dataset.get("sha256") else ""),
    ]
    if spec.device is not None:
        lines.append(f"  device: {spec.device.model} {json.dumps(spec.device.params, sort_keys=True)}")
    lines.append(f"  {'layer':5s} {'type':7s} {'in → out':28s} {'weights':>9s} {'|w| max':>9s}  extra")
    for i, ls in enumerate(spec.layers):
        extra = []
        if ls.type == "conv2d":
            extra.append(f"k{ls.weight.shape[2]} s{ls.stride} p{ls.padding} {ls.pool}")
        if ls.readout:
            extra.append("readout")
        if ls.weight_backward is not None:
            extra.append("untied feedback")
        if ls.conductance is not None:
            c = ls.conductance
            g = np.concatenate([c.g_plus_uS.ravel(), c.g_minus_uS.ravel()])
            extra.append(
                f"g {g.min():.3g}…{g.max():.3g} µS (range {c.g_min_uS:g}…{c.g_max_uS:g}), scale {c.scale_uS_per_unit:.4g} µS/unit"
            )
            if c.stuck_mask is not None:
                extra.append(f"{int((c.stuck_mask > 0).sum())} stuck")
            if c.levels is not None:
                extra.append(f"{int(c.levels.max()) + 1 if c.levels.size else 0} levels used")
        shapes = f"{ls.in_shape} → {ls.out_shape}"
        lines.append(f"  {i:02d}    {ls.type:7s} {shapes:28s} {ls.weight.size:9d} {float(np.abs(ls.weight).max()):9.4f}  {'; '.join(extra)}")
    return "\n".join(lines)

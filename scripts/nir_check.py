#!/usr/bin/env python
"""The figures of docs/results.md §8b (NIR export), printed and written as JSON rather than asserted:

    python scripts/nir_check.py RUN_OR_FILE [--card sims/nir_cubalif.toml] [--n-val 200] [--n-test 200]
                                [--select] [--lif-card sims/brian2_lif.toml] [--out nir_check.json]

for a run directory or a neurohw network file of a dense net:

1. (--select) the NIR scenario's four rate-map parameters (cubalif.slope_hidden, onset_hidden, slope_output,
   onset_output; docs/math.md eq. nir-map) chosen on the first --n-val VALIDATION images of the run's split
   (highest accuracy, then highest agreement with torch, then the smallest rms difference between the NIR
   network's outputs and torch's — both are s_N, or the readout's scores): the test set is not
   looked at until the choice is made. Without --select the card's values are used as they are.
2. the NIR file of that scenario (`neurohw export --format nir`), read back and run by neurohw's Brian2
   substrate on the first --n-test test images, next to the torch reference on the same images;
3. snnTorch 1.0.0's `import_from_nir` of the same file on the same images: agreement with Brian2, accuracy;
4. (--lif-card) the current LIF scenario (eq. lif) on the same images, for the same net;
5. wall time of each simulator on those images (one thread: torch.set_num_threads and OMP_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRID = {  # docs/math.md eq. nir-map: s ≈ a·(u − u_on) above the rheobase u_on
    "slope_hidden": (0.2, 0.3, 0.5),
    "onset_hidden": (-0.2, 0.0),
    "slope_output": (0.3, 0.5, 0.8),
    "onset_output": (-0.3, -0.1),
}


def load(run_or_file: Path):
    """(spec, DataConfig of the run's data) of a run directory or a network file (which records its card)."""
    from neurohw.config import load_config

    if run_or_file.is_dir():
        from neurohw.export import spec_from_run

        return spec_from_run(run_or_file), load_config(run_or_file / "config.toml").data
    from neurohw.io.hdf5 import load_spec

    spec = load_spec(run_or_file)
    if not spec.config_toml:
        sys.exit(f"{run_or_file}: the file records no training card, so its validation split is unknown")
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.toml").write_text(spec.config_toml)
        return spec, load_config(Path(d) / "config.toml").data


def timed(f, *a, **kw):
    t0 = time.perf_counter()
    out = f(*a, **kw)
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="run directory or neurohw network file (dense net)")
    p.add_argument("--card", type=Path, default=ROOT / "sims" / "nir_cubalif.toml", help="the NIR scenario card")
    p.add_argument("--n-val", type=int, default=200, help="validation images for --select (default 200)")
    p.add_argument("--n-test", type=int, default=200, help="test images: accuracy, agreement, wall times (default 200)")
    p.add_argument("--select", action="store_true", help="choose the rate-map parameters on validation images (GRID)")
    p.add_argument("--lif-card", type=Path, help="also run this LIF scenario card on the test images")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, help="write the figures to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from neurohw.data import load_splits
    from neurohw.io.nir import export_nir, read_nir, run_snntorch
    from neurohw.nirtools import nir_scenario
    from neurohw.simulate import test_split
    from neurohw.substrates.brian2 import Brian2Substrate, cubalif, load_brian2_scenario
    from neurohw.substrates.torch import TorchSubstrate

    spec, data_cfg = load(args.run)
    report: dict = {"source": str(args.run), "card": str(args.card), "n_val": args.n_val, "n_test": args.n_test,
                    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.machine(),
                    "threads": args.threads, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        report["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                          text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        report["commit"] = None
    card_scenario = nir_scenario(args.card)
    card_values = {k: getattr(card_scenario.cubalif, k) for k in GRID}
    torch_sub = TorchSubstrate()

    # 1. the rate map, chosen on validation images
    chosen = dict(card_values)
    if args.select:
        splits = load_splits(data_cfg)
        n = min(args.n_val, len(splits.val.labels))
        xv = spec.preprocess(splits.val.images[:n].numpy()).reshape(n, -1)
        yv = splits.val.labels[:n].numpy()
        out_v = torch_sub.run(spec, xv.reshape(n, *spec.input_shape)).outputs
        ref_v = out_v.argmax(1)
        rows = []
        points = [dict(zip(GRID, v)) for v in itertools.product(*GRID.values())]
        if card_values not in points:
            points.append(dict(card_values))
        for i, point in enumerate(points):
            sc = nir_scenario(args.card, [f"cubalif.{k}={v}" for k, v in point.items()])
            out = Brian2Substrate(sc).run_cubalif(cubalif.from_spec(spec, sc.cubalif)[0], xv)
            pred = out.argmax(1)
            row = {**point, "val_accuracy": float((pred == yv).mean()), "val_agreement": float((pred == ref_v).mean()),
                   "val_output_rms": float(np.sqrt(np.mean((out - out_v) ** 2)))}
            rows.append(row)
            print(f"[{i + 1}/{len(points)}] {point}: validation accuracy {100 * row['val_accuracy']:.2f} %, "
                  f"agreement {100 * row['val_agreement']:.2f} %, rms output − torch {row['val_output_rms']:.4f}", flush=True)
        best = max(rows, key=lambda r: (r["val_accuracy"], r["val_agreement"], -r["val_output_rms"]))
        chosen = {k: best[k] for k in GRID}
        report["selection"] = {"n_val": n, "torch_val_accuracy": float((ref_v == yv).mean()), "grid": rows,
                               "chosen": chosen, "card": card_values,
                               "card_val_accuracy": next(r["val_accuracy"] for r in rows if {k: r[k] for k in GRID} == card_values)}
    report["scenario"] = chosen
    scenario = nir_scenario(args.card, [f"cubalif.{k}={v}" for k, v in chosen.items()])

    # 2. the NIR file, read back, on Brian2, next to torch
    with tempfile.TemporaryDirectory() as d:
        path = export_nir(spec, scenario.cubalif, Path(d) / "net.nir")
        x_test, y_test = test_split(spec, path)
        n = min(args.n_test, len(y_test))
        x = spec.preprocess(x_test[:n].numpy()).reshape(n, -1)
        y = y_test[:n].numpy()
        ref, t_torch = timed(lambda: torch_sub.run(spec, x.reshape(n, *spec.input_shape)).predictions)
        net, _ = read_nir(path)
        b2 = Brian2Substrate(scenario)
        out_b2, t_b2 = timed(b2.run_cubalif, net, x)
        b, c = scenario.brian2, scenario.cubalif
        steps, read = b.free_steps, int(round(c.read_ms / b.dt_ms))
        # 3. snnTorch on the same file
        out_snn, t_snn = timed(run_snntorch, path, x, steps, read)
    p_b2, p_snn = out_b2.argmax(1), out_snn.argmax(1)
    report.update({
        "n_test": n, "dt_ms": b.dt_ms, "steps": steps, "read_steps": read, "brian2_target": b2.target,
        "torch_accuracy": float((ref == y).mean()), "torch_wall_s": t_torch,
        "nir_brian2_accuracy": float((p_b2 == y).mean()), "nir_brian2_agreement_with_torch": float((p_b2 == ref).mean()),
        "nir_brian2_wall_s": t_b2, "nir_brian2_build_s": b2.wall_build_s, "nir_brian2_run_s": b2.wall_run_s,
        "snntorch_accuracy": float((p_snn == y).mean()), "snntorch_agreement_with_brian2": float((p_snn == p_b2).mean()),
        "snntorch_agreement_with_torch": float((p_snn == ref).mean()), "snntorch_wall_s": t_snn,
        "neurons": net.n, "recurrent_synapses": int(np.count_nonzero(net.w_rec)),
    })
    # 4. the LIF scenario on the same images
    if args.lif_card:
        lif_sc = load_brian2_scenario(args.lif_card)
        lif = Brian2Substrate(lif_sc)
        p_lif, t_lif = timed(lambda: lif.run(spec, x).predictions)
        report.update({"lif_card": str(args.lif_card), "lif_accuracy": float((p_lif == y).mean()),
                       "lif_agreement_with_torch": float((p_lif == ref).mean()), "lif_wall_s": t_lif})

    pct = lambda v: f"{100 * v:.2f} %"
    print(f"\n{args.run}: {n} test images, scenario {chosen}"
          + (f" (chosen on {report['selection']['n_val']} validation images)" if args.select else " (the card's)"))
    print(f"  torch reference          accuracy {pct(report['torch_accuracy'])}, {t_torch:.2f} s")
    print(f"  NIR file on Brian2       accuracy {pct(report['nir_brian2_accuracy'])}, agreement with torch "
          f"{pct(report['nir_brian2_agreement_with_torch'])}, {t_b2:.1f} s (target {b2.target}; Δt {b.dt_ms} ms, {steps} steps, "
          f"read {read})")
    print(f"  NIR file on snnTorch     accuracy {pct(report['snntorch_accuracy'])}, agreement with Brian2 "
          f"{pct(report['snntorch_agreement_with_brian2'])}, {t_snn:.1f} s")
    if args.lif_card:
        print(f"  LIF scenario ({args.lif_card.name})  accuracy {pct(report['lif_accuracy'])}, agreement with torch "
              f"{pct(report['lif_agreement_with_torch'])}, {report['lif_wall_s']:.1f} s")
    if args.out:
        from neurohw.io.atomic import write_text

        write_text(args.out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Command line: `neurohw train | gdu | bench | export | inspect | validate | import-conductances | keys | data-info`
(also `python -m neurohw`, and under torchrun).

Errors that neurohw raises on bad input are printed as one line `neurohw: error: …` with exit
status 2; anything else is a bug and keeps its traceback. When the reader of the output goes away
(`neurohw keys | head -1`), neurohw stops quietly with exit status 1, as Python's documentation
recommends for a broken pipe.

Files: a command never replaces work without being told: `train` and `insitu` refuse an existing run
and `export` an existing network file unless `--overwrite`. Reports that a command rewrites in seconds
or minutes (`simulate --out`, `bench --json`, `gdu --out`) are replaced, and `import-conductances`
replaces FILE unless `--out` (its purpose); every command prints the paths it wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from neurohw.errors import NeurohwError


def _split_card_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    card = None
    overrides = []
    for item in items:
        if "=" in item or card is not None:
            overrides.append(item)
        else:
            card = item
    return card, overrides


def cmd_train(args: argparse.Namespace) -> int:
    card, overrides = _split_card_and_overrides(args.items)
    return _train_card(args, card, overrides, "neurohw train needs a model card, e.g. `neurohw train models/mnist_ep_fc1.toml`")


def _train_card(args: argparse.Namespace, card: str | None, overrides: list[str], missing: str, tables=None,
                insitu: bool = False) -> int:
    """`neurohw train` and `neurohw insitu`: load the card (or, with --resume and no card, the run's
    config.toml), train into --out (default runs/<card name>), print the selected epoch."""
    from neurohw.config import load_config
    from neurohw.errors import ConfigError
    from neurohw.train import train

    if args.resume and not args.out:
        raise ConfigError("--resume needs --out, the run directory to continue")
    if card is None and args.resume:
        card = str(Path(args.out) / "config.toml")
    if card is None:
        raise ConfigError(missing)
    if Path(card).is_dir():
        raise ConfigError(f"'{card}' is a directory, not a card (e.g. {Path(card) / 'mnist_ep_fc1.toml'})")
    notes: list[str] = []
    cfg = load_config(card, overrides, notes=notes, tables=tables)
    if insitu and not hasattr(cfg, "pulsed"):
        raise ConfigError(f"'{card}' is not an in-situ card (no [pulsed], [update], [substrate] or [insitu] table); "
                          "train it with `neurohw train`")
    out = args.out or str(Path("runs") / Path(card).stem)
    summary = train(
        cfg, out, resume=args.resume, overwrite=args.overwrite, data_dir=args.data_dir, progress=not args.no_progress,
        notes=notes,
    )
    if not _is_main_process():  # under torchrun every rank trains; rank 0 reports
        return 0
    pulses = f", {summary['pulses']} pulses" if "pulses" in summary else ""
    print(
        f"{Path(out)}: best epoch {summary['best_epoch']} by validation error "
        f"({100 * summary['val_error']:.2f} %): test error {100 * summary['test_error']:.2f} %{pulses}"
    )
    return 0


def _is_main_process() -> bool:
    """Rank 0 under torchrun (torch.distributed's rank while its group is up, else the RANK that
    torchrun sets), and the only process otherwise."""
    import os

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0") or "0") == 0


def _say(line: str) -> None:
    """A progress message (compiling kernels, the estimate of a long run) on stderr, apart from the results."""
    print(line, file=sys.stderr, flush=True)


def cmd_gdu(args: argparse.Namespace) -> int:
    from neurohw import gdu

    cfg = gdu.gdu_config(args.overrides)
    result = gdu.compute_gdu(cfg)
    print(gdu.report(result))
    gdu.write_h5(result, args.out)
    figure = args.figure or str(Path(args.out).with_suffix(".png"))
    gdu.plot(result, figure)
    print(f"wrote {args.out} and {figure}")
    return 0


def _write_json(path: str | None, obj: dict) -> None:
    """Write `obj` as indented JSON to `path` (atomically), if a path was given."""
    if path:
        from neurohw.io.atomic import write_text

        write_text(path, json.dumps(obj, indent=2) + "\n")
        print(f"wrote {path}")


def cmd_bench(args: argparse.Namespace) -> int:
    from neurohw import bench
    from neurohw.errors import ConfigError

    chosen = [name for name in ("analog", "brian2", "card") if getattr(args, name)]
    if len(chosen) > 1:
        raise ConfigError(f"--{' and --'.join(chosen)} are different benchmarks: give one of them")
    if args.overrides and not args.card:
        raise ConfigError(f"key=value overrides ({' '.join(args.overrides)}) belong to --card")
    if (args.compile or args.batches != 20 or args.epoch_samples) and not args.card:
        raise ConfigError("--compile, --batches and --epoch-samples belong to --card")
    if args.population:
        from neurohw.bench import format_population_bench, run_population_bench

        if not args.card:
            raise ConfigError("--population needs --card, the card whose members to time")
        if args.compile or args.epoch_samples or args.population < 1:
            raise ConfigError("--population K (K ≥ 1) times the population program: --compile and --epoch-samples are --card's alone")
        r = run_population_bench(args.card, args.overrides, members=args.population, batches=args.batches,
                                 device=args.device, threads=args.threads)
        print(format_population_bench(r))
        _write_json(args.json, r)
        return 0
    if args.card:
        from neurohw.bench import format_card_bench, run_card_bench

        if args.sim:
            raise ConfigError("--sim is the analog scenario of --analog or --brian2, not of --card")
        if args.epoch_samples < 0:
            raise ConfigError(f"bench --epoch-samples must be ≥ 0 (0: no epoch), got {args.epoch_samples}")
        r = run_card_bench(args.card, args.overrides, device=args.device, batches=args.batches, threads=args.threads,
                           epoch_samples=args.epoch_samples, compiled=args.compile)
        print(format_card_bench(r))
        _write_json(args.json, r)
        return 0
    if args.sim and not (args.analog or args.brian2):
        raise ConfigError("--sim is the analog scenario of --analog or --brian2; the engine bench takes none")
    bench.check_counts(args.samples, args.threads, args.repeats, min_samples=1 if args.analog or args.brian2 else bench.BATCH)
    if args.brian2:
        targets = tuple(t.strip() for t in args.targets.split(","))
        r = bench.run_brian2_bench(args.brian2, args.samples, targets, args.sim, threads=args.threads or 2,
                                   progress=not args.no_progress, log=_say)
        print(bench.format_brian2_bench(r))
    elif args.analog:
        r = bench.run_analog_bench(args.analog, args.sim, args.samples, args.threads or 2, progress=not args.no_progress,
                                   log=_say)
        compiled = f"; {r['compile_s']:.1f} s compiling kernels (first run only), not timed" if r["kernels_compiled"] else ""
        print(f"analog substrate, {r['n']} MNIST inferences, {r['threads']} threads: numba kernel "
              f"{r['kernel_inferences_per_s']:.0f}/s, numpy twin {r['twin_inferences_per_s']:.0f}/s ({r['ratio']:.1f} ×); "
              f"accuracy {100 * r['kernel_accuracy']:.2f} % / {100 * r['twin_accuracy']:.2f} %{compiled}")
    else:
        r = bench.run_bench(
            samples=args.samples, device=args.device, data_dir=args.data_dir, threads=args.threads, repeats=args.repeats
        )
        print(bench.format_bench(r))
    _write_json(args.json, r)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from neurohw.export import export_run, inspect_text

    if args.format == "nir" or args.sim:  # the NIR graph of the spiking scenario (neurohw/nirtools.py)
        from neurohw.errors import ConfigError
        from neurohw.nirtools import export as export_nir

        if args.format != "nir":
            raise ConfigError("--sim is the spiking scenario of --format nir (e.g. sims/nir_cubalif.toml)")
        out = export_nir(args.run, args.out, args.sim, args.device, overwrite=args.overwrite)
        print(f"wrote {out} (NIR graph: input → Affine → CubaLIF population with its recurrent weight → readout → output)")
        return 0
    out = export_run(args.run, args.out, args.device, overwrite=args.overwrite)
    print(f"wrote {out}")
    print(inspect_text(out))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from neurohw.export import inspect_text

    print(inspect_text(args.file))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from neurohw.io.hdf5 import load_spec

    spec = load_spec(args.file)
    print(f"{args.file}: valid neurohw network file (format version 1, {len(spec.layers)} layers, checksums match)")
    return 0


def cmd_import_conductances(args: argparse.Namespace) -> int:
    from neurohw.devices.mapping import import_conductances, read_measured
    from neurohw.io.hdf5 import load_spec, save_spec

    spec = load_spec(args.file)
    clipped: dict[str, int] = {}
    spec = import_conductances(spec, read_measured(args.measured), str(args.measured), clip=args.clip, clipped=clipped)
    out = save_spec(spec, args.out or args.file)
    print(f"wrote {out}: conductances from {args.measured}, effective weights recomputed")
    if args.clip:
        detail = f" ({', '.join(f'{k}: {n}' for k, n in clipped.items())})" if clipped else ""
        print(f"--clip: {sum(clipped.values())} measured values lay outside [g_min, g_max] and were clipped to it{detail}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from neurohw.simulate import format_report, simulate

    from neurohw.nirtools import is_nir_file

    if str(args.file).endswith(".nir") or is_nir_file(args.file):  # a NIR graph (neurohw export --format nir, or another tool)
        from neurohw.nirtools import format_report as format_nir, simulate as simulate_nir

        report = simulate_nir(args.file, args.substrate, args.sim, args.n, args.overrides, args.data_dir, args.engine, args.data)
        print(format_nir(report))
        _write_json(args.out, report)
        return 0
    args.substrate = args.substrate or "analog"
    report = simulate(args.file, args.substrate, args.sim, args.n, args.overrides, args.data_dir, args.engine, args.data,
                      progress=not args.no_progress, log=_say)
    print(format_report(report))
    _write_json(args.out, report)
    return 0


def cmd_insitu(args: argparse.Namespace) -> int:
    from neurohw.config import read_toml
    from neurohw.errors import ConfigError

    card, overrides = _split_card_and_overrides(args.items)
    tables = None
    if args.pulsed:
        device = read_toml(args.pulsed, "device card")
        if "pulsed" not in device:
            raise ConfigError(f"device card '{args.pulsed}' has no [pulsed] table")
        tables = {"pulsed": device["pulsed"]}
        if args.resume and card is None:
            raise ConfigError("--pulsed replaces the card's devices: a resumed run keeps its own (drop --pulsed)")
    return _train_card(args, card, overrides, "neurohw insitu needs an in-situ card, e.g. sims/insitu_constantstep.toml",
                       tables, insitu=True)


KEY_KINDS = {  # neurohw keys --<kind>: (what the cards are, their config class, its tables listed)
    "insitu": ("in-situ cards (sims/insitu_*.toml; `neurohw train` or `neurohw insitu`): a model card (`neurohw keys`, "
               "with learner.algorithm = \"cep\") plus these hardware tables", "neurohw.substrates.analog.insitu:InSituRunConfig",
               ("substrate", "peripherals", "pulsed", "update", "insitu")),
    "sim": ("analog scenario cards (sims/ideal.toml, sims/pcm_1day.toml; `simulate --sim`, `bench --analog/--brian2 --sim`, "
            "overrides key=value); [device] is optional: it re-maps the file's weights onto those devices",
            "neurohw.substrates.analog.model:Scenario", None),
    "brian2": ("Brian2 scenario cards (sims/brian2_*.toml; `simulate --substrate brian2 --sim`, overrides key=value)",
               "neurohw.substrates.brian2.config:Brian2Scenario", None),
}


def _key_lines(cls: type, prefix: str = "", values=None, tables=None) -> list[str]:
    """`key = default  meaning` for every key of the config dataclass `cls` (nested tables included, an
    optional one with its own defaults); `values`: the instance whose values are the defaults (a
    table's default_factory), `tables`: only these top-level fields."""
    import dataclasses
    import typing

    from neurohw.config import _toml_value

    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if tables is not None and f.name not in tables:
            continue
        kind = hints[f.name]
        table = kind if dataclasses.is_dataclass(kind) else next(
            (a for a in typing.get_args(kind) if dataclasses.is_dataclass(a)), None)  # `DeviceProfile | None`
        if values is not None:
            value = getattr(values, f.name)
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = f.default
        if table is not None:
            lines += _key_lines(table, f"{prefix}{f.name}.", value if value is not None else table())
        else:
            text = _toml_value(value)
            lines.append(f"{prefix + f.name:28s} = {text:14s} {' ' if len(text) >= 14 else ''}{f.metadata.get('doc', '')}")
    return lines


def cmd_sweep(args: argparse.Namespace) -> int:
    from neurohw.errors import ConfigError
    from neurohw.population import sweep

    card, items = _split_card_and_overrides(args.items)
    if card is None and args.resume and not items:  # `neurohw sweep --resume --out DIR`: the sweep's own card and grid
        from neurohw.population import recorded

        rec = recorded(args.out)
        card, items = rec["card"], rec["items"]
        if args.members_per_program == 0:
            args.members_per_program = rec["members_per_program"]
    if card is None:
        raise ConfigError("neurohw sweep needs a model card, e.g. `neurohw sweep models/mnist_ep_fc1.toml seed=0,1,2 --out runs/seeds`")
    if args.members_per_program < 0:
        raise ConfigError(f"--members-per-program must be ≥ 0 (0: every member of a program at once), got {args.members_per_program}")
    rows = sweep(card, items, args.out, members_per_program=args.members_per_program, resume=args.resume,
                 overwrite=args.overwrite, data_dir=args.data_dir, progress=not args.no_progress)
    if rows:
        out = Path(args.out)
        print(f"{out}: {len(rows)} members; wrote {out / 'sweep.csv'}, {out / 'summary.md'}, {out / 'curves.png'}")
        print((out / "summary.md").read_text().split("\n", 2)[2].rstrip())
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    import importlib

    from neurohw.config import describe

    kind = next((k for k in KEY_KINDS if getattr(args, k)), None)
    if kind is None:
        print(describe())
        return 0
    title, where, tables = KEY_KINDS[kind]
    module, name = where.split(":")
    print(f"# {title}")
    print("\n".join(_key_lines(getattr(importlib.import_module(module), name), tables=tables)))
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from neurohw.config import load_config
    from neurohw.data import check_net, describe_splits, load_splits

    card, overrides = _split_card_and_overrides(args.items)
    cfg = load_config(card, overrides)
    splits = load_splits(cfg.data, args.data_dir)
    check_net(splits.info, cfg.net)
    print(describe_splits(splits, cfg.data))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from neurohw import __version__

    p = argparse.ArgumentParser(prog="neurohw", description="Equilibrium Propagation for neuromorphic hardware")
    p.add_argument("--version", action="version", version=f"neurohw {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model card", description="Train a model card; key=value items override it.")
    t.add_argument("items", nargs="*", metavar="CARD [key=value ...]", help="models/<card>.toml then dotted overrides")
    t.add_argument("--out", help="run directory (default runs/<card name>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    t.add_argument("--data-dir", help="dataset folder (else $NEUROHW_DATA, else ./data)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("gdu", help="EP vs BPTT step-by-step check (Ernoult et al. 2019, Theorem 1)")
    g.add_argument("overrides", nargs="*", metavar="key=value", help="activation, beta, T_free, T_nudge, estimator, seed, sizes, batch_size, init_gain")
    g.add_argument("--out", default="gdu.h5", help="HDF5 file to write (default gdu.h5)")
    g.add_argument("--figure", help="PNG figure (default: --out with .png)")
    g.set_defaults(func=cmd_gdu)

    b = sub.add_parser("bench", help="closed-form engine vs autograd-of-Φ EP on MNIST (mnist_ep_fc1)")
    b.add_argument("--samples", type=int, default=2000,
                   help="training samples per engine, ≥ 20 (one batch; rounded down to whole batches; default 2000); "
                        "with --analog/--brian2: test images, ≥ 1")
    b.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    b.add_argument("--threads", type=int, default=0, help="CPU threads, ≥ 0 (0: torch's default; 2 with --analog/--brian2)")
    b.add_argument("--repeats", type=int, default=3, help="runs per engine, ≥ 1, fastest reported (default 3)")
    b.add_argument("--analog", metavar="FILE.h5", help="instead: the analog substrate's inference rate on this file")
    b.add_argument("--brian2", metavar="FILE.h5", help="instead: Brian2 speed per code-generation target on this file, next to the analog substrate")
    b.add_argument("--targets", default="numpy,cython,cpp_standalone", help="with --brian2: comma-separated targets")
    b.add_argument("--sim", help="with --analog/--brian2: the analog scenario card (default: full noise)")
    b.add_argument("--data-dir", help="dataset folder")
    b.add_argument("--card", metavar="CARD.toml", help="instead: one training update of this model card on synthetic data of its "
                   "shape, every variant this machine runs (eager, program, CUDA graph, TF32/bf16 operands) side by side")
    b.add_argument("overrides", nargs="*", metavar="key=value", help="with --card: card overrides")
    b.add_argument("--batches", type=int, default=20, help="with --card: timed updates per variant, ≥ 1 (default 20)")
    b.add_argument("--compile", action="store_true", help="with --card: add the update through torch.compile (minutes to compile)")
    b.add_argument("--population", type=int, default=0, metavar="K",
                   help="with --card: K members of the card as one population program against K single runs one after another")
    b.add_argument("--epoch-samples", type=int, default=0,
                   help="with --card: also time a whole epoch of this many synthetic training samples, evaluation included (0: no)")
    b.add_argument("--json", help="write the figures to this JSON file")
    b.add_argument("--no-progress", action="store_true", help="with --analog/--brian2: no progress bars (shown on a terminal only)")
    b.set_defaults(func=cmd_bench)

    e = sub.add_parser("export", help="write a run's network to HDF5 (optionally mapped onto a device profile)")
    e.add_argument("run", help="run directory (runs/<id>)")
    e.add_argument("--device", help="device profile TOML (sims/<profile>.toml): conductance mapping")
    e.add_argument("--out", help="HDF5 file to write (default <run>/network.h5); an existing file is refused unless --overwrite")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    e.add_argument("--format", default="hdf5", choices=("hdf5", "nir"),
                   help="hdf5 (neurohw's network file, default) | nir (a NIR graph of the spiking scenario; RUN may also be a network file)")
    e.add_argument("--sim", help="with --format nir: the spiking scenario card (default: sims/nir_cubalif.toml's values)")
    e.set_defaults(func=cmd_export)

    i = sub.add_parser("inspect", help="human-readable summary of a network file")
    i.add_argument("file")
    i.set_defaults(func=cmd_inspect)

    v = sub.add_parser("validate", help="check a network file's schema and checksums (exit status 2 if invalid)")
    v.add_argument("file")
    v.set_defaults(func=cmd_validate)

    m = sub.add_parser("import-conductances", help="replace g± by measured conductances and recompute the weights")
    m.add_argument("file", help="network file with a device mapping")
    m.add_argument("measured", help=".npz or .h5 with layers/NN/g_plus_uS and layers/NN/g_minus_uS")
    m.add_argument("--out", help="write here instead of replacing FILE")
    m.add_argument("--clip", action="store_true",
                   help="clip every measured value to the device's [g_min, g_max] (without it, values beyond that range "
                        "by more than 5 %% of g_max - g_min, the measurement tolerance, are refused)")
    m.set_defaults(func=cmd_import_conductances)

    sm = sub.add_parser("simulate", help="run an exported network on a substrate next to the torch reference")
    sm.add_argument("file", help="network file (neurohw export)")
    sm.add_argument("overrides", nargs="*", metavar="key=value",
                    help="scenario overrides (analog, brian2; `neurohw keys --sim`, `--brian2`), "
                         "e.g. peripherals.adc_bits=6 peripherals.out_bound=8 (an ADC needs its full scale)")
    sm.add_argument("--substrate", default=None, help="torch | analog | brian2 (default analog; a .nir file: brian2); torch takes no --sim or overrides")
    sm.add_argument("--sim", help="scenario card sims/<scenario>.toml (default: ideal; brian2: the rate model's defaults)")
    sm.add_argument("--n", type=int, default=1000, help="test images, ≥ 0 (default 1000; 0: all)")
    sm.add_argument("--engine", help="analog only: kernel (numba, the default) | twin (numpy)")
    sm.add_argument("--data-dir", help="dataset folder")
    sm.add_argument("--data", help="the file (arrays) or folder (folder) of the network's own dataset, when it was trained "
                    "on one; its sha256 must match the one the network file records")
    sm.add_argument("--out", help="report.json to write")
    sm.add_argument("--no-progress", action="store_true", help="no progress bar (shown on a terminal only)")
    sm.set_defaults(func=cmd_simulate)

    it = sub.add_parser("insitu", help="in-situ C-EP training on crossbars of pulsed devices (neurohw train of an in-situ card)",
                        description="Train an in-situ card (a model card with hardware tables); key=value items override it.")
    it.add_argument("items", nargs="*", metavar="CARD [key=value ...]", help="sims/insitu_*.toml then overrides, e.g. train.epochs=1 pulsed.dw_min=0.002")
    it.add_argument("--pulsed", help="device card sims/devices/*.toml replacing the card's [pulsed] table")
    it.add_argument("--out", help="run directory (default runs/<card name>)")
    it.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint (its config.toml; overrides such as train.epochs=N allowed)")
    it.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    it.add_argument("--data-dir", help="dataset folder")
    it.add_argument("--no-progress", action="store_true", help="no progress bar")
    it.set_defaults(func=cmd_insitu)

    sw = sub.add_parser("sweep", help="train a grid of settings and seeds as populations (many nets at once)",
                        description="Train CARD for every combination of key=v1,v2,… (values split on top-level commas: "
                                    "train.lrs=[0.08,0.04],[0.04,0.02]); members sharing their architecture and learner train "
                                    "as one program. Under torchrun the members are shared out among the processes.")
    sw.add_argument("items", nargs="*", metavar="CARD [key=v1,v2,… ...]", help="the card, then the grid")
    sw.add_argument("--out", required=True, help="sweep directory: members/<member>/ run directories, sweep.csv, summary.md, curves.png")
    sw.add_argument("--members-per-program", type=int, default=0, help="at most this many members per program (0: all that can share one)")
    sw.add_argument("--resume", action="store_true", help="continue every member from its checkpoint (members not started start); CARD and grid may be left out")
    sw.add_argument("--overwrite", action="store_true", help="replace an existing sweep in --out")
    sw.add_argument("--data-dir", help="dataset folder")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep)

    k = sub.add_parser("keys", help="list every config key with its default and meaning",
                       description="Every key of a model card (default), or of another kind of card, with its default and meaning.")
    kinds = k.add_mutually_exclusive_group()
    kinds.add_argument("--insitu", action="store_true", help="the hardware tables of in-situ cards (sims/insitu_*.toml)")
    kinds.add_argument("--sim", action="store_true", help="analog scenario cards (simulate --sim, sims/ideal.toml)")
    kinds.add_argument("--brian2", action="store_true", help="Brian2 scenario cards (sims/brian2_*.toml)")
    k.set_defaults(func=cmd_keys)

    di = sub.add_parser("data-info", help="the dataset a card resolves to: splits, input shape, classes, normalisation, path, sha256",
                        description="Load a card's dataset as `neurohw train` would and describe it; key=value items override the card.")
    di.add_argument("items", nargs="*", metavar="CARD [key=value ...]", help="models/<card>.toml then dotted overrides (no card: the defaults)")
    di.add_argument("--data-dir", help="dataset folder (else $NEUROHW_DATA, else ./data)")
    di.set_defaults(func=cmd_data_info)
    return p


def main(argv: list[str] | None = None) -> int:
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:  # epoch lines reach a log file (`… > run.log`) as they are printed, not 8 KiB later
        reconfigure(line_buffering=True)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the options (`neurohw train CARD --out DIR train.epochs=1`)
    target = "items" if hasattr(args, "items") else "overrides" if hasattr(args, "overrides") else None
    if extra and (target is None or any("=" not in e or e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        setattr(args, target, list(getattr(args, target)) + extra)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that went away (`| head -1`) is found here at the latest, inside the try
        return code
    except NeurohwError as e:
        print(f"neurohw: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`neurohw keys | head -1`): exit 2 like every other error, without a line
        # (the reader asked for less output, not for a message); as Python's documentation advises (signal
        # module, "Note on SIGPIPE"), point stdout at devnull so that the interpreter's last flush does not
        # fail again
        try:
            import os

            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # no file descriptor (an in-process caller's stream)
            pass
        return 2


if __name__ == "__main__":
    sys.exit(main())

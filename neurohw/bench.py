"""`neurohw bench`: the closed-form EP engine against autograd-of-Φ EP, in one run.

Workload: N MNIST training samples of the mnist_ep_fc1 card (784-512-10, sigmoid4, batch 20,
T_free 30, T_nudge 10, β 0.1, one-sided, SGD with learning rates 0.08 / 0.04) trained from the same
initial weights by both engines; then the validation error of each on the first 1,000 validation
images (the two must agree: they compute the same EP).

Work per batch of B samples for layer sizes n_0 … n_N (multiply-adds count 2 FLOPs):
  input drive D_0(x) once:                  2·B·n_0·n_1
  every step, for each layer i ≥ 1:         2·B·n_i·n_{i+1} forward + the same for the feedback
  ∂Φ/∂θ contrast of the two phase ends:    2·B·n_0·n_1 (shared input x: one product of the
                                            state difference) + 2 × Σ_{i≥1} 2·B·n_i·n_{i+1}
The autograd engine recomputes D_0(x) at every step and adds autograd's backward pass. The
engine's GFLOP/s is the closed-form FLOP count over its measured time; `matmul_gflops` is what plain
`torch.mm` reaches on exactly the same list of matrix products, the floor for this engine. Each
engine trains `repeats` times from the same initial weights, the runs of the two engines interleaved;
the fastest run of each is reported (the usual defence against a noisy shared machine).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from neurohw.config import DataConfig, LearnerConfig, NetConfig
from neurohw.data import DATASETS, Preprocess, load_splits, one_hot
from neurohw.errors import ConfigError
from neurohw.learning.ep import EP
from neurohw.nets.build import build_net

SIZES = (784, 512, 10)
BATCH, T_FREE, T_NUDGE, BETA, LRS = 20, 30, 10, 0.1, (0.08, 0.04)
EVAL_SAMPLES = 1000


def flops_per_batch(sizes: tuple[int, ...], batch: int, T_free: int, T_nudge: int) -> int:
    """Closed-form EP FLOPs for one batch (one-sided: one nudged phase), see the module doc."""
    pairs = [sizes[i] * sizes[i + 1] for i in range(len(sizes) - 1)]
    drive = 2 * batch * pairs[0]
    per_step = sum(2 * 2 * batch * p for p in pairs[1:])
    param_grads = 2 * batch * pairs[0] + 2 * sum(2 * batch * p for p in pairs[1:])
    return drive + (T_free + T_nudge) * per_step + param_grads


def matmul_shapes(sizes: tuple[int, ...], batch: int, T_free: int, T_nudge: int) -> list[tuple[int, int, int]]:
    """The (m, k, n) matrix products of one batch of closed-form EP."""
    shapes = [(batch, sizes[0], sizes[1])]
    for _ in range(T_free + T_nudge):
        for i in range(1, len(sizes) - 1):
            shapes += [(batch, sizes[i], sizes[i + 1]), (batch, sizes[i + 1], sizes[i])]
    shapes.append((sizes[1], batch, sizes[0]))
    for _ in range(2):
        shapes += [(sizes[i + 1], batch, sizes[i]) for i in range(1, len(sizes) - 1)]
    return shapes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_matmuls(shapes, n_batches: int, device, dtype) -> float:
    mats = {s: (torch.rand(s[0], s[1], device=device, dtype=dtype), torch.rand(s[1], s[2], device=device, dtype=dtype)) for s in set(shapes)}
    for s in shapes:  # warm-up
        torch.mm(*mats[s])
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        for s in shapes:
            torch.mm(*mats[s])
    _sync(device)
    return time.perf_counter() - t0


def _train_once(engine, net_cfg, learner_cfg, info, images, labels, n_batches, dev, dtype):
    """Seconds to train `n_batches` batches with one engine from the seed-0 initial weights."""
    net = build_net(net_cfg, info.input_shape, info.n_classes, generator=torch.Generator().manual_seed(0)).to(dev, dtype)
    pre = Preprocess(info, net.input_shape, dev, dtype)
    learner = EP(learner_cfg.beta, learner_cfg.T_free, learner_cfg.T_nudge, engine=engine)
    opt = torch.optim.SGD([{"params": list(l.parameters()), "lr": lr} for l, lr in zip(net.layers, LRS)], lr=LRS[0])
    batches = [
        (pre(images[i : i + BATCH]), one_hot(labels[i : i + BATCH], info.n_classes, dtype))
        for i in range(0, n_batches * BATCH, BATCH)
    ]
    _sync(dev)
    t0 = time.perf_counter()
    for x, y in batches:
        learner.step(net, x, y, opt.step)
    _sync(dev)
    return time.perf_counter() - t0, (net, learner, pre)


def check_counts(samples: int, threads: int, repeats: int = 1, *, min_samples: int = 1, min_threads: int = 0) -> None:
    """ConfigError unless samples ≥ min_samples, threads ≥ min_threads and repeats ≥ 1 (the options
    --samples, --threads and --repeats of `neurohw bench`), before any data is loaded."""
    for name, value, low, note in (
        ("samples", samples, min_samples, f" (one batch of {BATCH})" if min_samples == BATCH else ""),
        ("threads", threads, min_threads, " (0: torch's default)" if min_threads == 0 else ""),
        ("repeats", repeats, 1, ""),
    ):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ConfigError(f"bench --{name} must be an integer ≥ {low}{note}, got {value}")


def run_bench(samples: int = 2000, device: str = "cpu", data_dir=None, threads: int = 0, repeats: int = 3) -> dict:
    """Both engines on `samples` MNIST training samples (≥ one batch, rounded down to whole batches and
    to the training split; the report's `samples` is the number trained), `repeats` ≥ 1 runs each."""
    check_counts(samples, threads, repeats, min_samples=BATCH)
    from neurohw.train import resolve_device

    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)  # ConfigError naming the device when CUDA is not available
    dtype = torch.float32
    splits = load_splits(DataConfig(), data_dir)
    info = DATASETS["mnist"]
    n_batches = min(samples, len(splits.train)) // BATCH
    order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))[: n_batches * BATCH]
    images, labels = splits.train.images[order].to(dev), splits.train.labels[order].to(dev)
    net_cfg = NetConfig(architecture="fc", hidden=SIZES[1:-1], activation="sigmoid4", cost="mse")
    learner_cfg = LearnerConfig(beta=BETA, T_free=T_FREE, T_nudge=T_NUDGE)
    results: dict[str, float] = {}
    nets = {}
    for _ in range(repeats):
        for engine in ("closed_form", "autograd"):
            seconds, nets[engine] = _train_once(engine, net_cfg, learner_cfg, info, images, labels, n_batches, dev, dtype)
            results[engine] = min(results.get(engine, float("inf")), seconds)
    val_x, val_y = splits.val.images[:EVAL_SAMPLES].to(dev), splits.val.labels[:EVAL_SAMPLES].to(dev)
    errors = {}
    for engine, (net, learner, pre) in nets.items():  # the last run of each engine
        errors[engine] = float((learner.predict(net, pre(val_x)).argmax(1) != val_y).float().mean())
    max_weight_diff = max(
        float((a - b).detach().abs().max()) for a, b in zip(nets["closed_form"][0].param_list(), nets["autograd"][0].param_list())
    )
    flops = flops_per_batch(SIZES, BATCH, T_FREE, T_NUDGE) * n_batches
    matmul_s = _time_matmuls(matmul_shapes(SIZES, BATCH, T_FREE, T_NUDGE), n_batches, dev, dtype)
    n = n_batches * BATCH
    return {
        "samples": n,
        "engine_samples_per_s": n / results["closed_form"],
        "autograd_samples_per_s": n / results["autograd"],
        "ratio": results["autograd"] / results["closed_form"],
        "engine_gflops": flops / results["closed_form"] / 1e9,
        "matmul_gflops": flops / matmul_s / 1e9,
        "flops_per_sample": flops / n,
        "engine_val_error": errors["closed_form"],
        "autograd_val_error": errors["autograd"],
        "max_weight_difference": max_weight_diff,
        "repeats": repeats,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": __import__("os").cpu_count(),
        "torch": torch.__version__,
        "date_utc": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def format_bench(r: dict) -> str:
    return "\n".join(
        [
            f"neurohw bench: mnist_ep_fc1 EP (784-512-10, batch {BATCH}, T {T_FREE}/{T_NUDGE}), {r['samples']} samples, "
            f"{r['device']}, {r['threads']} threads, torch {r['torch']}",
            f"  closed-form engine : {r['engine_samples_per_s']:9.0f} samples/s  {r['engine_gflops']:7.2f} GFLOP/s"
            f"  val error {100 * r['engine_val_error']:.2f} %",
            f"  autograd of Φ      : {r['autograd_samples_per_s']:9.0f} samples/s"
            f"                    val error {100 * r['autograd_val_error']:.2f} %",
            f"  ratio              : {r['ratio']:9.1f} ×",
            f"  plain torch.mm on the engine's matrix products: {r['matmul_gflops']:.2f} GFLOP/s "
            f"({r['flops_per_sample'] / 1e6:.2f} MFLOP per sample)",
            f"  largest weight difference between the engines after training: {r['max_weight_difference']:.2e}",
        ]
    )


def run_analog_bench(path, scenario_path=None, n: int = 1000, threads: int = 2, overrides=(), progress: bool = False,
                     log=None) -> dict:
    """MNIST inferences per second of the analog substrate, numba kernel vs numpy twin, same images and
    scenario: the card (e.g. sims/pcm_1day.toml) with full read noise on top (8-bit DAC and ADC,
    per-read weight and output noise), so that the samples never settle and run t_max_s. `n` ≥ 1 test
    images (at most the test set; the report's `n` is the number run), `threads` ≥ 1. The kernel is
    loaded or compiled before the timing (`compile_s`); `progress` and `log` as in simulate.simulate."""
    check_counts(n, threads, min_threads=1)
    import numba

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))  # never beyond the launched pool
    torch.set_num_threads(threads)
    from neurohw.data import load_raw
    from neurohw.io.hdf5 import load_spec
    from neurohw.simulate import dataset_of
    from neurohw.progress import Progress
    from neurohw.substrates.analog import AnalogSubstrate, load_scenario, prepare_kernels

    full_noise = ["peripherals.dac_bits=8", "peripherals.adc_bits=8", "peripherals.out_bound=12.0",
                  "peripherals.w_noise=0.02", "peripherals.out_noise=0.02"]
    scenario = load_scenario(scenario_path, [*full_noise, *overrides])  # the card, with full read noise on top
    spec = load_spec(path)
    _, _, x_test, y_test = load_raw(dataset_of(spec))
    n = min(n, len(y_test))
    x = spec.preprocess(x_test[:n].numpy())
    compiled, compile_s = prepare_kernels((lambda: log("compiling kernels (first run only) …")) if log else None)
    out = {}
    for engine in ("kernel", "twin"):
        what = f"bench: the analog substrate's {'numba kernel' if engine == 'kernel' else 'numpy twin'} on {n} images"
        with Progress(n, f"analog {engine}", bar=progress, log=log, what=what,
                      first_batch=scenario.substrate.batch_size) as bar:
            t0 = time.perf_counter()
            trace = AnalogSubstrate(scenario, engine).run(spec, x, progress=bar if progress or log else None)
            out[engine] = (time.perf_counter() - t0, float((trace.predictions == y_test[:n].numpy()).mean()))
    return {
        "file": str(path), "scenario": str(scenario_path), "n": n, "threads": threads,
        "kernel_inferences_per_s": n / out["kernel"][0], "twin_inferences_per_s": n / out["twin"][0],
        "ratio": out["twin"][0] / out["kernel"][0], "kernel_accuracy": out["kernel"][1], "twin_accuracy": out["twin"][1],
        "compile_s": compile_s, "kernels_compiled": compiled,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "date_utc": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def run_brian2_bench(path, n: int = 100, targets: tuple[str, ...] = ("numpy", "cython", "cpp_standalone"),
                     analog_scenario=None, lif_card="sims/brian2_lif.toml", threads: int = 2, progress: bool = False,
                     log=None) -> dict:
    """Brian2 speed on an exported dense network, per code-generation target: the rate model with the
    analog scenario's integration (same Δt/τ and number of steps, so the work per inference is the
    same as the analog substrate's), and the LIF model of `lif_card`. Reports simulated seconds per wall
    second, inferences per second, and the build (code generation, compilation) and run parts; then the
    analog substrate (numba kernel, full read noise) on the same images and step count for the ratio.
    `n` ≥ 1 test images (at most the test set), `threads` ≥ 1. `progress`: a bar per model and target;
    `log`: the estimate of each long one (neurohw/progress.py)."""
    check_counts(n, threads, min_threads=1)
    from neurohw.data import load_raw
    from neurohw.io.hdf5 import load_spec
    from neurohw.progress import Progress
    from neurohw.simulate import dataset_of
    from neurohw.substrates.analog import load_scenario
    from neurohw.substrates.brian2 import Brian2Substrate, load_brian2_scenario

    spec = load_spec(path)
    _, _, x_test, y_test = load_raw(dataset_of(spec))
    n = min(n, len(y_test))
    x, y = spec.preprocess(x_test[:n].numpy()), y_test[:n].numpy()
    sub = load_scenario(analog_scenario).substrate
    h, steps = sub.dt_s / sub.tau_s, sub.max_steps
    rate_cfg = [f"brian2.dt_ms={10.0 * h!r}", "brian2.tau_ms=10", f"brian2.t_free_ms={10.0 * h * steps!r}", "brian2.batch_size=50"]
    rows = []
    for model, card, overrides in (("rate", None, rate_cfg), ("lif", lif_card, ["brian2.batch_size=50"])):
        for target in targets:
            sc = load_brian2_scenario(card, [*overrides, f"brian2.target={target}"])
            b2sub = Brian2Substrate(sc)
            with Progress(n, f"brian2 {model} {target}", bar=progress, log=log, what=f"bench: Brian2 {model}, {target}, on {n} images",
                          first_batch=sc.brian2.batch_size) as bar:
                t0 = time.perf_counter()
                pred = b2sub.run(spec, x, progress=bar if progress or log else None).predictions
                wall = time.perf_counter() - t0
            simulated = n * sc.brian2.free_steps * sc.brian2.dt_ms * 1e-3
            rows.append({
                "model": model, "target": target, "wall_s": wall, "build_s": b2sub.wall_build_s, "run_s": b2sub.wall_run_s,
                "simulated_s": simulated, "simulated_s_per_wall_s": simulated / wall, "inferences_per_s": n / wall,
                "steps_per_inference": sc.brian2.free_steps, "accuracy": float((pred == y).mean()),
            })
    analog = run_analog_bench(path, analog_scenario, n, threads, progress=progress, log=log)
    cython_rate = [r for r in rows if r["model"] == "rate" and r["target"] == "cython"]
    return {
        "file": str(path), "n": n, "analog_scenario": str(analog_scenario), "analog_steps_per_inference": steps,
        "brian2": rows, "analog": analog,
        "analog_kernel_over_brian2_cython": (analog["kernel_inferences_per_s"] / cython_rate[0]["inferences_per_s"]
                                             if cython_rate else None),
        "threads": threads, "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "date_utc": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def format_brian2_bench(r: dict) -> str:
    lines = [f"Brian2 on {r['file']}, {r['n']} MNIST test images ({r['date_utc']}, {r['machine']}):",
             "  model target          inf/s   sim s/wall s   build s   run s   steps   accuracy"]
    for row in r["brian2"]:
        lines.append(f"  {row['model']:<5} {row['target']:<15} {row['inferences_per_s']:6.2f} {row['simulated_s_per_wall_s']:13.3f} "
                     f"{row['build_s']:9.1f} {row['run_s']:7.1f} {row['steps_per_inference']:7d} {100 * row['accuracy']:9.2f} %")
    a = r["analog"]
    lines.append(f"  analog numba kernel (full read noise, {r['analog_steps_per_inference']} steps): {a['kernel_inferences_per_s']:.1f} inf/s, "
                 f"numpy twin {a['twin_inferences_per_s']:.1f} inf/s")
    if r["analog_kernel_over_brian2_cython"] is not None:
        lines.append(f"  analog kernel / Brian2 cython rate model: {r['analog_kernel_over_brian2_cython']:.1f} ×")
    return "\n".join(lines)


# ------------------------------------------------------------------------ one card's update
TEST_SIZE = 10_000  # the test split of MNIST, Fashion-MNIST and CIFAR-10 (a whole epoch evaluates it)
CARD_WARMUP = 3  # updates run before the timing of each variant (lazy initialisation, cuDNN autotuning)
_SYNCING_OPS = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select", "unique"}


def count_ops(fn) -> dict[str, int]:
    """Run `fn` once and count what it dispatches: `kernels` (operators that compute: every one is a
    kernel launch on a GPU), `views` (free: no kernel) and `host_reads` (operators that read a tensor's
    value back to the host: a synchronisation on a GPU), by a TorchDispatchMode."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = {"kernels": 0, "views": 0, "host_reads": 0}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in _SYNCING_OPS:
                counts["host_reads"] += 1
            elif func.is_view:
                counts["views"] += 1
            else:
                counts["kernels"] += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return counts


def count_flops(fn) -> int:
    """Floating-point operations of the matrix products and convolutions `fn` runs (torch's counter,
    which knows out-of-place products only: the engine's in-place `addmm_` are added; multiply-adds
    count 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    def addmm_inplace(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]

    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: addmm_inplace}) as counter:
        fn()
    return int(counter.get_total_flops())


def _card_trainer(cfg, splits, out, program: bool):
    from neurohw.train import Trainer

    return Trainer(cfg, out, resume=False, overwrite=True, data_dir=None, splits=splits, progress=False, log=None,
                   use_program=program)


def run_card_bench(
    card: str, overrides: list[str] | tuple[str, ...] = (), *, device: str = "cpu", batches: int = 20, threads: int = 0,
    epoch_samples: int = 0, out_dir=None, compiled: bool = False,
) -> dict:
    """Time one training update of a model card on synthetic data of its shape, every way this machine
    can run it, side by side in one run: `eager` (the reference loop: learner.step and torch.optim),
    `program` (the static update of neurohw/program.py, run eagerly) and, on CUDA, `graph` (that update
    captured as a CUDA graph) and the graph with TF32 and bf16 operands; on the CPU also `program/bf16`.
    Each variant trains `batches` batches from the same initial weights after CARD_WARMUP updates.
    Per update it also counts the kernels, views and host reads dispatched (eager and program) and the
    FLOPs of the products. `compiled` adds the update through torch.compile (`program/compiled`, and on
    CUDA `graph/compiled`), its compilation time reported apart. With `epoch_samples` > 0 it times a whole epoch of that many synthetic training
    samples through `neurohw train`'s loop, evaluation on the card's validation and test sizes included.
    """
    import tempfile

    from neurohw.config import load_config
    from neurohw.data import synthetic_splits
    from neurohw.errors import ConfigError
    from neurohw.train import resolve_device

    check_counts(batches, threads, 1, min_samples=1)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    base = load_config(card, [*overrides, f"device={dev}"])
    if base.learner.algorithm not in ("ep", "cep", "cvf"):
        raise ConfigError(f"bench --card times the EP learners' update; {card} uses learner.algorithm = '{base.learner.algorithm}'")
    info = DATASETS[base.data.dataset]
    B = base.train.batch_size
    n = (CARD_WARMUP + batches) * B
    splits = synthetic_splits(info, n, min(B, 1000), min(B, 1000), seed=0)
    variants = [("eager", "fp32", False), ("program", "fp32", True)]
    if dev.type == "cuda":
        variants += [("graph", "fp32", True), ("graph/tf32", "tf32", True), ("graph/bf16", "bf16", True)]
        variants += [("graph/compiled", "fp32", True)] if compiled else []
    else:
        variants += [("program/bf16", "bf16", True)]
        variants += [("program/compiled", "fp32", True)] if compiled else []
    rows = []
    work = tempfile.TemporaryDirectory() if out_dir is None else None
    root = Path(work.name) if work is not None else Path(out_dir)
    try:
        for name, precision, program in variants:
            graphs = "true" if name.startswith("graph") else "false"
            extra = ["train.compile=true"] if name.endswith("compiled") else []
            cfg = load_config(card, [*overrides, f"device={dev}", f"train.precision={precision}", f"train.cuda_graphs={graphs}", *extra])
            tr = _card_trainer(cfg, splits, root / name.replace("/", "_"), program)
            rows.append(_time_variant(name, tr, program, batches, dev))
        counts = rows[0].pop("counts"), rows[1].pop("counts")
        for r in rows:
            r.pop("counts", None)
        epoch = None
        if epoch_samples:
            cfg = load_config(card, [*overrides, f"device={dev}", "train.epochs=1"])
            n_val, n_test = cfg.data.val_size, TEST_SIZE
            ep_splits = synthetic_splits(info, epoch_samples, n_val, n_test, seed=1)
            from neurohw.train import train

            t0 = time.perf_counter()
            summary = train(cfg, root / "epoch", overwrite=True, splits=ep_splits, progress=False, log=None)
            wall = time.perf_counter() - t0
            epoch = {"train_samples": epoch_samples, "eval_samples": n_val + n_test, "wall_s": wall,
                     "samples_per_s": epoch_samples / wall, "update": summary["update"]}
    finally:
        if work is not None:
            work.cleanup()
    flops = rows[0]["flops_per_update"]
    cuda = torch.version.cuda if dev.type == "cuda" else None
    return {
        "card": str(card), "overrides": list(overrides), "device": str(dev), "batch_size": B, "batches": batches,
        "T_free": base.learner.T_free, "T_nudge": base.learner.T_nudge, "estimator": base.learner.estimator,
        "relaxation": base.learner.relaxation, "variants": rows,
        "per_update": {"eager": counts[0], "program": counts[1], "flops": flops},
        "epoch": epoch,
        "torch": torch.__version__, "cuda": cuda,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "threads": torch.get_num_threads(), "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def _time_variant(name: str, tr, program: bool, batches: int, dev: torch.device) -> dict:
    """Samples/s of `batches` updates of one variant after CARD_WARMUP (the batches of one epoch's tables)."""
    from neurohw.program import draw_epoch
    from neurohw.train import device_settings

    cfg = tr.cfg
    B = cfg.train.batch_size
    with device_settings(dev, cfg.train.precision, conv=tr.memory_format is not None):
        if program:
            prog = tr.program
            prog.begin_epoch(draw_epoch(len(tr.train_split), prog.n_batches, B, tr.shuffle_gen, tr.augment_gen,
                                        prog.padding, tr.learner.sampler))
            counts = count_ops(prog._update_flagged)  # the update's operators, uncompiled
            flops = count_flops(prog._update_flagged)
            prog.counter.zero_()  # the timed updates use the epoch's tables from the start
            t0 = time.perf_counter()
            if name.startswith("graph"):
                tr._capture()
                if prog.graph is None:
                    raise RuntimeError(f"bench --card: the {name} variant could not be captured")
            elif name.endswith("compiled"):
                prog.run()
                prog.counter.zero_()
            _sync(dev)
            compile_s = time.perf_counter() - t0 if name.endswith("compiled") else None
            step = prog
            for _ in range(CARD_WARMUP):
                step()
        else:
            batches_xy = _eager_batches(tr, CARD_WARMUP + batches)
            it = iter(batches_xy)
            step = lambda: tr.learner.step(tr.net, *next(it), tr.apply)
            x0, y0 = batches_xy[0]
            counts = count_ops(lambda: tr.learner.step(tr.net, x0, y0, tr.apply))
            flops = count_flops(lambda: tr.learner.step(tr.net, x0, y0, tr.apply))
            for _ in range(CARD_WARMUP):
                step()
            compile_s = None
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(batches):
            step()
        _sync(dev)
        wall = time.perf_counter() - t0
    return {"variant": name, "precision": cfg.train.precision, "ms_per_update": 1e3 * wall / batches,
            "samples_per_s": batches * B / wall, "gflops": flops * batches / wall / 1e9, "flops_per_update": flops,
            "compile_s": compile_s, "counts": counts}


def _eager_batches(tr, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n` batches prepared as the eager training loop prepares them (outside the timing)."""
    from neurohw.data import one_hot

    B, split = tr.cfg.train.batch_size, tr.train_split
    out = []
    for b in range(n):
        idx = torch.arange(b * B, (b + 1) * B, device=split.images.device) % len(split)
        x = tr.preprocess(split.images[idx])
        if tr.memory_format is not None:
            x = x.contiguous(memory_format=tr.memory_format)
        out.append((x, one_hot(split.labels[idx], tr.info.n_classes, tr.dtype)))
    return out


def format_card_bench(r: dict) -> str:
    pu = r["per_update"]
    lines = [
        f"neurohw bench --card {r['card']}: batch {r['batch_size']}, T {r['T_free']}/{r['T_nudge']} ({r['estimator']}, "
        f"{r['relaxation']}), {r['batches']} timed updates, {r['device']}{' ' + r['gpu'] if r['gpu'] else ''}, "
        f"torch {r['torch']}{', CUDA ' + r['cuda'] if r['cuda'] else ''}, {r['threads']} threads, {r['date_utc']} UTC",
        f"  per update: {pu['flops'] / 1e6:.1f} MFLOP of products; kernels / host reads dispatched: "
        f"eager {pu['eager']['kernels']} / {pu['eager']['host_reads']}, program {pu['program']['kernels']} / {pu['program']['host_reads']}",
        "  variant          ms/update   samples/s   GFLOP/s",
    ]
    for v in r["variants"]:
        note = f"   (compilation {v['compile_s']:.0f} s, before the timing)" if v.get("compile_s") else ""
        lines.append(f"  {v['variant']:<15} {v['ms_per_update']:10.3f} {v['samples_per_s']:11.0f} {v['gflops']:9.2f}{note}")
    if r["epoch"]:
        e = r["epoch"]
        lines.append(f"  whole epoch ({e['update']}): {e['train_samples']} training + {e['eval_samples']} evaluation samples "
                     f"in {e['wall_s']:.1f} s = {e['samples_per_s']:.0f} training samples/s")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- populations
def run_population_bench(card: str, overrides=(), *, members: int = 8, batches: int = 20, device: str = "cpu",
                         threads: int = 0) -> dict:
    """Samples/s of `members` nets of a card trained as one population program (neurohw/population.py)
    against the same nets trained one after another on the single-network path (eager, and the static
    program; the faster is the baseline), on synthetic data of the card's shape, in one run: an epoch of
    `batches` batches each, after a warm-up epoch. Also the ceiling the work allows: the single net's
    time per update is split into the work that grows with K in a population too (the input drive, the
    ∂Φ/∂θ contrast products and the parameter step; T_nudge times for C-EP/C-VF, which update at every
    step) and the rest (which a population shares); with C and O per
    update, K members as one program cannot beat K·(C+O)/(K·C + O). That bound takes the relaxation
    for shared overhead; a second one counts its arithmetic too: one net trained on batches of K·B
    samples (the members' products in the best shapes one program could give them, one parameter step)."""
    import tempfile

    from neurohw.config import load_config
    from neurohw.data import synthetic_splits
    from neurohw.errors import ConfigError
    from neurohw.population import Member, Population
    from neurohw.train import Trainer, resolve_device

    check_counts(batches, threads, 1, min_samples=1)
    if members < 1:
        raise ConfigError(f"bench --population must be ≥ 1, got {members}")
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    base = [*overrides, f"device={dev}", "train.epochs=2", "train.scheduler=none", "train.patience=0"]
    cfg0 = load_config(card, base)
    if cfg0.data.dataset not in DATASETS:
        raise ConfigError(f"bench --population times synthetic data of a named dataset's shape; {card} uses '{cfg0.data.dataset}'")
    info, B = DATASETS[cfg0.data.dataset], cfg0.train.batch_size
    splits = synthetic_splits(info, batches * B, min(B, 200), min(B, 200), seed=0)
    cfgs = [load_config(card, [*base, f"train.seed={k}", f"learner.seed={k}"]) for k in range(members)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pop = Population([Member(f"seed {k}", c, root / "pop" / f"m{k}") for k, c in enumerate(cfgs)], splits=splits,
                         progress=False, log=None)
        pop.train_epoch(0, [True] * members)  # warm-up (vmap tracing, allocations)
        _sync(dev)
        t0 = time.perf_counter()
        pop.train_epoch(1, [True] * members)
        _sync(dev)
        t_pop = time.perf_counter() - t0
        singles = {}
        for name, program in (("eager", False), ("program", True)):
            total = 0.0
            for k, c in enumerate(cfgs):
                tr = Trainer(c, root / name / f"m{k}", resume=False, overwrite=True, data_dir=None, splits=splits,
                             progress=False, log=None, use_program=program)
                tr.train_epoch(0)
                _sync(dev)
                t0 = time.perf_counter()
                tr.train_epoch(1)
                _sync(dev)
                total += time.perf_counter() - t0
            singles[name] = total
        # one net on K·B samples per batch: the members' arithmetic (relaxation included) in the best shapes
        # one program could give it, with one parameter step instead of K
        big_cfg = load_config(card, [*base, f"train.batch_size={members * B}"])
        big = Trainer(big_cfg, root / "big", resume=False, overwrite=True, data_dir=None, progress=False, log=None,
                      splits=synthetic_splits(info, batches * B * members, min(B, 200), min(B, 200), seed=0))
        big.train_epoch(0)
        _sync(dev)
        t0 = time.perf_counter()
        big.train_epoch(1)
        _sync(dev)
        t_big = time.perf_counter() - t0
        # the part of one update of one net that grows with the members: its input drive, contrast products
        # and parameter step — once per update for EP, at each of the T_nudge steps for C-EP/C-VF
        tr = Trainer(cfgs[0], root / "parts", resume=False, overwrite=True, data_dir=None, splits=splits, progress=False, log=None)
        x = tr.preprocess(splits.train.images[:B].to(tr.device))
        repeats = tr.learner.n_updates if cfg0.learner.algorithm in ("cep", "cvf") else 1
        with torch.no_grad():
            s = tr.net.init_state(x)
            s = [t + 0.5 for t in s]
            s0 = tr.net.init_state(x)
            layers = tr.net._layers[: tr.net.n_states]  # the products of EP's contrast, also those of C-VF's rule (no Φ)
            params = tr.net.param_list()
            ctx = lambda layer, a: layer.drive(a)[1] if layer.needs_ctx else None

            def part():
                tr.net.input_drive(x)
                grads = [g for layer, a, b, a0, b0 in zip(layers, [x, *s], s, [x, *s0], s0)
                         for g in layer.phi_grads_diff(a, b, ctx(layer, a), a0, b0, ctx(layer, a0))]
                for p, g in zip(params, grads):
                    p.add_(g, alpha=0.0)

            for _ in range(3):
                part()
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(20):
                part()
            _sync(dev)
            c_update = repeats * (time.perf_counter() - t0) / 20
    best_single = min(singles.values())
    per_update = best_single / (members * batches)
    c_update = min(c_update, per_update)  # timed apart, under load the parts can exceed the whole
    o_update = per_update - c_update
    ceiling = members * per_update / (members * c_update + o_update) if c_update + o_update > 0 else float("nan")
    n = members * batches * B
    return {
        "card": str(card), "overrides": list(overrides), "members": members, "batches": batches, "batch_size": B,
        "device": str(dev), "population_samples_per_s": n / t_pop,
        "sequential_samples_per_s": {k: n / v for k, v in singles.items()},
        "speedup": best_single / t_pop, "ceiling": ceiling, "compute_bound_ms_per_update": 1e3 * c_update,
        "ceiling_one_net_KB": best_single / t_big, "one_net_KB_samples_per_s": n / t_big,
        "ms_per_update_single": 1e3 * per_update, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def format_population_bench(r: dict) -> str:
    seq = ", ".join(f"{k} {v:.0f}" for k, v in r["sequential_samples_per_s"].items())
    return (
        f"neurohw bench --population {r['members']} --card {r['card']}: {r['batches']} batches of {r['batch_size']} per member, "
        f"{r['device']}, torch {r['torch']}, {r['threads']} threads, {r['date_utc']} UTC\n"
        f"  population (one program): {r['population_samples_per_s']:.0f} samples/s\n"
        f"  {r['members']} single runs one after another: {seq} samples/s\n"
        f"  speedup {r['speedup']:.2f}× (ceiling {r['ceiling']:.2f}×: per update {r['compute_bound_ms_per_update']:.2f} ms of "
        f"input drive, contrast products and parameter step, which grow with the members, of {r['ms_per_update_single']:.2f} ms;\n"
        f"  one net on batches of {r['members']}×{r['batch_size']}: {r['one_net_KB_samples_per_s']:.0f} samples/s, "
        f"{r['ceiling_one_net_KB']:.2f}× — the members' arithmetic, relaxation included, in the best shapes, one parameter step)"
    )

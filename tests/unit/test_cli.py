"""The command line as a new user meets it (issue 16, items 9–14): files never replaced without
--overwrite, progress and an estimate on long work, the kernels' compilation said and timed apart, a
closed pipe without a traceback, --version, keys of every card kind, what each command wrote."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from neurohw.cli import build_parser, main
from neurohw.config import NetConfig, load_config, valid_keys
from neurohw.io.hdf5 import save_spec
from neurohw.nets.build import build_net
from neurohw.nets.convert import to_spec
from tests.conftest import one_line_error

ROOT = Path(__file__).resolve().parents[2]




@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist_small):
    """A tiny trained run (784-16-10, one epoch on 300 images)."""
    from neurohw.train import train

    out = tmp_path_factory.mktemp("run") / "run"
    cfg = load_config(ROOT / "models" / "mnist_ep_fc1.toml",
                      ["net.hidden=[16]", "train.epochs=1", "data.limit_train=300", "data.limit_eval=100", "device=cpu"])
    train(cfg, out, splits=mnist_small, progress=False, log=None)
    return out


@pytest.fixture(scope="module")
def mnist_file(tmp_path_factory):
    """A small 784-12-10 network file (MNIST-shaped input), no device mapping."""
    net = build_net(NetConfig(hidden=(12,), activation="sigmoid4"), (1, 28, 28), 10, generator=torch.Generator().manual_seed(0))
    spec = to_spec(net, T_free=60, T_nudge=5, beta=0.1, image_shape=(1, 28, 28), input_mean=(0.0,), input_std=(1.0,))
    return save_spec(spec, tmp_path_factory.mktemp("cli") / "net.h5")


# ------------------------------------------------------------------------------ 9: export --overwrite
def test_export_refuses_to_replace_a_file_without_overwrite(run_dir, tmp_path, capsys):
    out = tmp_path / "net.h5"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    out.write_bytes(b"precious")  # whatever the file holds, it is not replaced silently
    assert main(["export", str(run_dir), "--out", str(out)]) == 2
    one_line_error(capsys, str(out), "already exists", "--overwrite")
    assert out.read_bytes() == b"precious"
    assert main(["export", str(run_dir), "--out", str(out), "--overwrite"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and out.read_bytes() != b"precious" and len(out.read_bytes()) > 1000
    default = run_dir / "network.h5"  # the default --out is guarded the same way
    default.unlink(missing_ok=True)
    assert main(["export", str(run_dir)]) == 0 and default.exists()
    assert main(["export", str(run_dir)]) == 2
    one_line_error(capsys, str(default), "--overwrite")
    default.unlink()


def test_export_help_says_it_refuses_without_overwrite(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    help_text = capsys.readouterr().out
    assert "--overwrite" in help_text and "refused unless --overwrite" in " ".join(help_text.split())


def test_export_library_refuses_before_any_work(tmp_path):
    from neurohw.errors import ConfigError
    from neurohw.export import export_run

    (tmp_path / "x.h5").write_bytes(b"x")
    with pytest.raises(ConfigError, match="already exists"):  # refused before it even looks at the run
        export_run(tmp_path / "no_such_run", tmp_path / "x.h5")


# ------------------------------------------------------------------------------- 10: scripts/compare.py
def _compare_module():
    spec = importlib.util.spec_from_file_location("compare_script", ROOT / "scripts" / "compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_writes_its_figure_under_out_says_so_and_titles_the_training_limit(tmp_path, monkeypatch, capsys):
    mod = _compare_module()
    row = {"method": "EP-1s", "card": "mnist_ep_fc1", "overrides": [], "algorithm": "ep", "test_error": 0.1, "val_error": 0.1,
           "best_epoch": 1, "epochs": 1, "wall_s_per_epoch": 2.0, "local_in_space": "yes", "local_in_time": "no",
           "symmetric_weights": "yes", "needs": "-", "angles_to_bp_deg": None}
    monkeypatch.setattr(mod, "run_all", lambda names, epochs, out, limit_train: [row])
    drawn = []
    chart = mod.bar_chart
    monkeypatch.setattr(mod, "bar_chart", lambda rows, path, title: (drawn.append((Path(path), title)), chart(rows, path, title)))
    tracked = ROOT / "docs" / "figures" / "compare_mnist.png"
    before = tracked.stat().st_mtime_ns if tracked.exists() else None
    out = tmp_path / "cmp"
    mod.main(["--epochs", "1", "--out", str(out), "--limit-train", "600", "--methods", "EP-1s"])
    (path, title), = drawn
    assert path == out / "compare_mnist.png" and path.exists()
    assert (tracked.stat().st_mtime_ns if tracked.exists() else None) == before  # the tracked figure untouched
    assert "600" in title and "--limit-train" in title
    printed = capsys.readouterr().out
    assert f"wrote {out / 'table.md'}" in printed and str(path) in printed
    assert "all training images" in mod.chart_title(3, 0)


# ------------------------------------------------------------------------------ 11: progress and estimates
class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_estimates_from_the_first_batch(monkeypatch):
    """Linear extrapolation at the end of the first batch; printed only when ≥ 10 s are left."""
    from neurohw import progress

    clock = _Clock()
    monkeypatch.setattr(progress, "_clock", clock)
    said: list[str] = []
    p = progress.Progress(200, "x", bar=False, log=said.append, what="simulating 200 images on Y", first_batch=50)
    clock.t = 60.0
    p(50)  # the first batch of 50 took 60 s: 150 left → 180 s
    assert said == ["simulating 200 images on Y: about 3.0 min more (measured: 25 % in 60 s)"] and p.estimate == 180.0
    clock.t = 200.0
    p(100)
    assert len(said) == 1  # once
    quick = progress.Progress(200, "x", bar=False, log=said.append, first_batch=50)
    clock.t += 2.0
    quick(50)
    assert len(said) == 1 and quick.estimate is None  # 6 s left: nothing to say


def test_progress_measures_set_up_and_simulation_apart_within_a_batch(monkeypatch):
    """A substrate that reports within a batch calls p(k0) when the batch's simulation starts: the
    estimate at `after_s` is r × (samples left) + b × (batches not started)."""
    from neurohw import progress

    clock = _Clock()
    monkeypatch.setattr(progress, "_clock", clock)
    said: list[str] = []
    p = progress.Progress(100, "x", bar=False, log=said.append, what="w", first_batch=50, after_s=30.0)
    clock.t = 10.0
    p(0.0)  # set-up of the first batch: 10 s
    clock.t = 20.0
    p(5.0)  # 2 s per sample; not yet 30 s in
    assert said == []
    clock.t = 30.0
    p(10.0)
    # 90 samples left × 2 s + one batch not started × 10 s
    assert p.estimate == pytest.approx(190.0) and said[0].startswith("w: about 3.2 min more (measured: 10 % in 30 s)")


def test_progress_bar_stays_off_when_stderr_is_not_a_terminal(capsys):
    from neurohw.progress import Progress

    with Progress(10, "quiet", bar=True) as p:
        for k in range(1, 11):
            p(k)
    assert capsys.readouterr().err == ""  # tqdm's disable=None: no terminal, no bar


def test_substrates_report_progress_per_batch_and_within_one():
    from neurohw.substrates.analog import AnalogSubstrate, load_scenario
    from neurohw.substrates.brian2 import Brian2Substrate, load_brian2_scenario
    from test_analog import small

    spec = small("fc")
    x = np.random.default_rng(0).random((5, 16))
    calls: list[float] = []
    AnalogSubstrate(load_scenario(None, ["substrate.batch_size=2"]), "twin").run(spec, x, progress=calls.append)
    assert calls == [2, 4, 5]
    calls.clear()
    sc = load_brian2_scenario(None, ["brian2.target=numpy", "brian2.batch_size=2", "brian2.t_free_ms=5"])
    Brian2Substrate(sc).run(spec, x, progress=calls.append)
    assert {2, 4, 5} <= set(calls) and 0 in calls and calls == sorted(calls)  # each batch from its start (k0) to its end


def test_simulate_passes_progress_and_a_log_and_no_progress_turns_the_bar_off(mnist_file, monkeypatch, capsys):
    import neurohw.simulate as sim

    seen = {}
    real = sim.simulate

    def spy(*args, **kw):
        seen.update(kw)
        return real(*args, **kw)

    monkeypatch.setattr(sim, "simulate", spy)
    assert main(["simulate", str(mnist_file), "--n", "4", "--engine", "twin"]) == 0
    assert seen["progress"] is True and callable(seen["log"])
    assert main(["simulate", str(mnist_file), "--n", "4", "--engine", "twin", "--no-progress"]) == 0
    assert seen["progress"] is False


def test_simulate_prints_the_estimate_of_a_long_run(mnist_file, monkeypatch):
    from neurohw import progress
    from neurohw.simulate import simulate

    clock = _Clock()

    def slow():  # every reading of the clock: 40 s later
        clock.t += 40.0
        return clock.t

    monkeypatch.setattr(progress, "_clock", slow)
    said: list[str] = []
    r = simulate(mnist_file, "analog", None, 6, ["substrate.batch_size=2", "substrate.t_max_s=2e-6"], engine="twin", log=said.append)
    assert r["n_samples"] == 6
    assert len(said) == 1 and said[0].startswith("simulating 6 images on the analog substrate (twin): about ")


def test_bench_no_progress_is_an_option_and_json_says_where_it_wrote(mnist_file, monkeypatch, tmp_path, capsys):
    import neurohw.bench as bench

    seen = {}

    def fake(path, scenario, n, threads, progress=False, log=None):
        seen.update(progress=progress, log=log)
        return {"n": n, "threads": threads, "kernel_inferences_per_s": 1.0, "twin_inferences_per_s": 1.0, "ratio": 1.0,
                "kernel_accuracy": 0.5, "twin_accuracy": 0.5, "compile_s": 30.0, "kernels_compiled": True}

    monkeypatch.setattr(bench, "run_analog_bench", fake)
    out = tmp_path / "b.json"
    assert main(["bench", "--analog", str(mnist_file), "--samples", "3", "--json", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert seen["progress"] is False and callable(seen["log"])
    assert f"wrote {out}" in printed and json.loads(out.read_text())["n"] == 3
    assert "30.0 s compiling kernels (first run only), not timed" in printed


# ------------------------------------------------------------------------------ 12: compiling kernels
def test_compiling_announces_a_real_compilation_once():
    from numba import njit

    from neurohw.core.compile_watch import compiling

    @njit
    def fresh(x):
        return x * 3.0 + 1.0

    @njit
    def other(x):
        return x - 1.0

    said = []
    with compiling(lambda: said.append("compiling"), only=[fresh]) as c:
        other(1.0)  # another function compiling does not count
    assert not c.compiled and said == []
    with compiling(lambda: said.append("compiling"), only=[fresh]) as c:
        fresh(1.0)
        fresh(2.0)
    assert c.compiled and said == ["compiling"] and c.seconds > 0
    with compiling(lambda: said.append("again")) as c:
        fresh(3.0)  # compiled already: nothing to say
    assert not c.compiled and said == ["compiling"]


def test_compiling_is_silent_when_numba_loads_the_kernel_from_its_disk_cache(tmp_path):
    """A `cache=True` function compiled by one process is loaded, not compiled, by the next."""
    (tmp_path / "cached_mod.py").write_text(textwrap.dedent("""
        from numba import njit

        @njit(cache=True)
        def f(x):
            return x * 2.0 + 1.0
    """))
    probe = textwrap.dedent("""
        import cached_mod
        from neurohw.core.compile_watch import compiling
        with compiling(lambda: print("announced"), only=[cached_mod.f]) as c:
            cached_mod.f(1.0)
        print("compiled" if c.compiled else "loaded")
    """)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    runs = [subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    assert [r.stdout.split() for r in runs] == [["announced", "compiled"], ["loaded"]], [r.stderr for r in runs]


def test_prepare_kernels_covers_the_signature_of_a_real_run():
    """After the warm-up, a real run compiles nothing more (same argument types)."""
    from neurohw.core.compile_watch import compiling
    from neurohw.substrates.analog import AnalogSubstrate, kernels, prepare_kernels
    from test_analog import small

    prepare_kernels()
    with compiling(only=[kernels.relax_kernel]) as c:
        AnalogSubstrate(None, "kernel").run(small("fc"), np.random.default_rng(0).random((3, 16)))
    assert not c.compiled
    assert prepare_kernels()[0] is False  # warm: nothing compiled


def test_simulate_says_compiling_and_reports_compile_time_apart(mnist_file, monkeypatch, tmp_path, capsys):
    import neurohw.substrates.analog as analog

    def compiles(announce=None):
        announce()
        return True, 12.5

    monkeypatch.setattr(analog, "prepare_kernels", compiles)
    out = tmp_path / "r.json"
    assert main(["simulate", str(mnist_file), "--n", "4", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "compiling kernels (first run only)" in captured.err
    assert "(and 12.5 s compiling kernels, first run only)" in captured.out.splitlines()[0]
    r = json.loads(out.read_text())
    assert r["compile_s"] == 12.5 and r["kernels_compiled"] is True and r["wall_s"] < 12.5
    monkeypatch.undo()
    analog.prepare_kernels()  # warm in this process: the next run compiles nothing, says nothing
    assert main(["simulate", str(mnist_file), "--n", "4", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "compiling kernels" not in captured.err + captured.out
    assert json.loads(out.read_text())["kernels_compiled"] is False


# ------------------------------------------------------------------------------ 13: tracebacks → one line
class _ClosedPipe:
    def write(self, s):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_ends_quietly_in_process(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["keys"]) == 2
    assert main(["export", str(run_dir), "--out", str(tmp_path / "n.h5")]) == 2
    monkeypatch.undo()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("unbuffered", [True, False])  # buffered, the closed pipe is found at the last flush
@pytest.mark.parametrize("argv", [["keys"], ["keys", "--brian2"]])  # more than stdout's 8 KiB buffer, and less
def test_keys_into_a_closed_pipe_has_no_traceback(argv, unbuffered):
    """`neurohw keys | head -1`: the reader is gone before neurohw writes."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | ({"PYTHONUNBUFFERED": "1"} if unbuffered else {})
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([sys.executable, "-m", "neurohw", *argv], cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE,
                           text=True, timeout=120, env=env)
    finally:
        os.close(write_end)
    assert r.returncode == 2 and r.stderr == "", r.stderr


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "models"], ["'models' is a directory", "mnist_ep_fc1.toml"]),
        (["insitu", "sims"], ["'sims' is a directory"]),
        (["bench", "--device", "cuda"], ["cuda"]),
    ],
)
def test_the_other_tracebacks_of_item_13_are_one_line(argv, words, capsys, monkeypatch):
    if argv[-1] == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    one_line_error(capsys, *words)


def test_a_corrupt_checkpoint_on_export_is_one_line_without_torchs_unsafe_advice(run_dir, tmp_path, capsys):
    import fractions

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    torch.save({"net": fractions.Fraction(1, 3)}, run / "best.pt")  # a global weights_only refuses: torch advises False
    assert main(["export", str(run), "--out", str(tmp_path / "n.h5")]) == 2
    err = one_line_error(capsys, "best.pt", "corrupt")
    assert "weights_only" not in err


# ------------------------------------------------------------------------------------------ 14: small
def test_version(capsys):
    from neurohw import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"neurohw {__version__}"


def _listed(capsys, *argv) -> dict[str, str]:
    assert main(["keys", *argv]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# ")
    return {m.group(1): m.group(2) for m in (re.match(r"(\S+)\s+= (.+?)  +\S", line + "  x") for line in out[1:]) if m}


def test_keys_lists_scenario_cards_and_every_listed_default_loads(capsys):
    from neurohw.substrates.analog import load_scenario
    from neurohw.substrates.analog.model import Scenario

    listed = _listed(capsys, "--sim")
    expected = [k for k in valid_keys(Scenario) if k != "device"]
    assert [k for k in listed if not k.startswith("device.")] == expected
    assert {"device.g_max_uS", "device.n_levels", "peripherals.adc_bits", "noise.t_inference_s"} <= set(listed)
    scenario = load_scenario(None, [f"{k}={v}" for k, v in listed.items()])  # every key, at its listed default
    assert scenario.device is not None and scenario.peripherals.adc_bits == 0


def test_keys_lists_brian2_cards(capsys):
    from neurohw.substrates.brian2 import load_brian2_scenario
    from neurohw.substrates.brian2.config import Brian2Scenario

    listed = _listed(capsys, "--brian2")
    assert list(listed) == valid_keys(Brian2Scenario)
    assert load_brian2_scenario(None, [f"{k}={v}" for k, v in listed.items()]).brian2.model == "rate"


def test_keys_lists_the_hardware_tables_of_in_situ_cards_with_their_defaults(capsys):
    from neurohw.config import RunConfig
    from neurohw.substrates.analog.insitu import InSituRunConfig

    listed = _listed(capsys, "--insitu")
    assert set(listed) == set(valid_keys(InSituRunConfig)) - set(valid_keys(RunConfig))
    assert listed["substrate.dt_s"] == "5e-07"  # the in-situ default, not the scenario's 1e-07
    card = load_config(ROOT / "sims" / "insitu_constantstep.toml", [f"{k}={v}" for k, v in listed.items()])
    assert card.substrate.dt_s == 5e-7


def test_simulate_out_says_where_it_wrote(mnist_file, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["simulate", str(mnist_file), "--substrate", "torch", "--n", "3", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {out}"


def test_the_simulate_help_example_works_as_written(mnist_file, capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["simulate"]
    help_text = next(a for a in sub._actions if a.dest == "overrides").help
    example = re.search(r"e\.g\. ((?:\S+=\S+ ?)+)", help_text).group(1).split()
    assert example[0] == "peripherals.adc_bits=6"
    assert main(["simulate", str(mnist_file), "--n", "3", "--engine", "twin", "substrate.t_max_s=2e-6", *example]) == 0


def test_readme_torchrun_line_uses_a_card_whose_data_ships():
    line = next(line for line in (ROOT / "README.md").read_text().splitlines() if "torchrun" in line)
    card = re.search(r"(models/\S+\.toml)", line).group(1)
    cfg = load_config(ROOT / card)
    assert cfg.data.dataset == "mnist" and (ROOT / "data" / "mnist").is_dir()
    assert "CIFAR-10" in line and "needs the dataset" in line


def test_gdu_figure_has_axis_labels_and_a_legend_for_both_markers():
    import matplotlib.pyplot as plt

    from neurohw import gdu

    result = gdu.compute_gdu(gdu.gdu_config(["sizes=[4,3,2]", "T_free=40", "T_nudge=4", "batch_size=2"]))
    fig = gdu.figure(result)
    try:
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
        (legend,) = fig.legends
        labels = [t.get_text() for t in legend.get_texts()]
        assert any(lab.startswith("EP") for lab in labels) and any(lab.startswith("BPTT") for lab in labels)
        line, circle = legend.legend_handles
        assert line.get_linestyle() == "-" and circle.get_marker() == "o" and circle.get_linestyle() == "None"
    finally:
        plt.close(fig)


@pytest.mark.parametrize("rank, prints", [("0", True), ("1", False)])
def test_under_torchrun_only_rank_0_prints_the_summary(rank, prints, monkeypatch, tmp_path, capsys):
    import neurohw.train

    summary = {"best_epoch": 1, "val_error": 0.1, "test_error": 0.1}
    monkeypatch.setattr(neurohw.train, "train", lambda cfg, out, **kw: summary)
    monkeypatch.setenv("RANK", rank)
    assert main(["train", str(ROOT / "models" / "mnist_ep_fc1.toml"), "--out", str(tmp_path / "r")]) == 0
    assert ("best epoch 1" in capsys.readouterr().out) == prints


def test_lines_reach_a_log_file_as_they_are_printed(tmp_path):
    """`neurohw … > run.log`: stdout is line-buffered, so a long run's epoch lines are in the file while it
    runs (block buffering held them back until 8 KiB had gathered). Read while the process still lives."""
    log = tmp_path / "out.log"
    code = "import time, neurohw.cli as c; c.cmd_keys = lambda a: (print('first line'), time.sleep(120), 0)[2]; c.main(['keys'])"
    with open(log, "w") as f:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as a user's shell has it
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=f, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 20
        while time.time() < deadline and "first line" not in log.read_text():
            time.sleep(0.2)
        assert "first line" in log.read_text()
    finally:
        proc.kill()
        proc.wait()

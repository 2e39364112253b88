from __future__ import annotations

import json
import subprocess
import sys

from neurohw.bench import flops_per_batch, matmul_shapes
from neurohw.cli import main


def test_import_is_light():
    code = "import sys, neurohw; print(sorted(m for m in ('numba', 'brian2', 'h5py', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_flop_count_matches_the_list_of_products():
    for sizes in [(784, 512, 10), (784, 512, 512, 10), (5, 7, 3, 2)]:
        shapes = matmul_shapes(sizes, 20, 30, 10)
        assert flops_per_batch(sizes, 20, 30, 10) == sum(2 * m * k * n for m, k, n in shapes)


def test_bench_engines_train_the_same_net(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--samples", "100", "--repeats", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("engine_samples_per_s", "autograd_samples_per_s", "ratio", "engine_gflops", "matmul_gflops"):
        assert r[key] > 0
    assert r["max_weight_difference"] < 1e-5  # float32 rounding only: the same EP
    assert r["engine_val_error"] == r["autograd_val_error"]
    assert "closed-form engine" in capsys.readouterr().out


def test_keys_lists_the_config(capsys):
    assert main(["keys"]) == 0
    assert "learner.T_nudge" in capsys.readouterr().out


def test_readme_python_example_runs():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["scores"].shape == (20, 10) and float(scope["stats"]["loss"]) > 0

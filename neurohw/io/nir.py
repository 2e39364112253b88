"""NIR graphs (the `nir` package, 1.0.8) of the NIR-expressible spiking scenario (docs/math.md eq. nir-map).

`export_nir(spec, scenario, path)` writes a dense EP network as

    input → input_affine (Affine) → recurrent (NIRGraph: input → lif (CubaLIF) ⇄ w_rec (Linear) → output) → readout → output

in SI seconds, with the neurohw provenance (the spec's fields, the scenario, the layer blocks) as graph
metadata that only `spec_from_nir` uses: the graph runs without it. The recurrent population is a NIR
subgraph because snnTorch 1.0.0's `import_from_nir` mis-wires a flat LIF ⇄ Affine cycle (it wraps the cycle
into a subgraph whose input edge enters w_rec, so the input current is multiplied by w_rec; docs/results.md
§8b); a subgraph is imported as written. `read_nir(path)` accepts both forms, as written by neurohw or by
another tool (snnTorch's `export_to_nir` of an RSynaptic layer writes the flat one, with an Affine w_rec),
and returns a `CubaLIFNet`; anything else is refused with the nodes and edges it found.

Needs the optional extra `nir` (pip install 'neurohw[nir]'); `run_snntorch` also needs snnTorch.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from neurohw.errors import ConfigError, SpecError
from neurohw.spec import NetworkSpec
from neurohw.substrates.brian2.config import CubaLIFConfig
from neurohw.substrates.brian2.cubalif import NEURON_PARAMS, CubaLIFNet, LayerScale, from_spec, layer_scales, to_layers

META_KEY = "neurohw"  # graph metadata: a JSON document, informational for any other reader
META_FORMAT = "neurohw-nir-cubalif"
META_VERSION = 1
SPEC_FIELDS = ("architecture", "activation", "cost", "nudge", "T_free", "T_nudge", "relaxation", "beta", "input_shape",
               "image_shape", "input_mean", "input_std", "pixel_scale", "dataset", "config_toml", "algorithm",
               "test_error", "val_error", "seed", "provenance")


def _nir():
    try:
        import nir
    except ImportError:
        raise ConfigError("NIR files need the 'nir' package: pip install 'neurohw[nir]'") from None
    return nir


# ------------------------------------------------------------------------------------ writing
def to_graph(net: CubaLIFNet, metadata: dict[str, Any] | None = None):
    """The nir.NIRGraph of a CubaLIFNet (neurohw's form: the population as a subgraph)."""
    nir = _nir()
    n = net.n
    params = {name: np.asarray(getattr(net, name), dtype=np.float64) for name in NEURON_PARAMS}
    population = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([n])}),
            "lif": nir.CubaLIF(**params),
            "w_rec": nir.Affine(net.w_rec, net.b_rec) if np.any(net.b_rec) else nir.Linear(net.w_rec),
            "output": nir.Output(output_type={"output": np.array([n])}),
        },
        edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")],
    )
    # names sort so that nirtorch, which visits nodes in the file's (alphabetical) order, meets the input
    # drive before the population
    nodes = {
        "input": nir.Input(input_type={"input": np.array([net.n_in])}),
        "input_affine": nir.Affine(net.affine_w, net.affine_b),
        "recurrent": population,
        "output": nir.Output(output_type={"output": np.array([net.n_out])}),
    }
    edges = [("input", "input_affine"), ("input_affine", "recurrent")]
    if net.readout_w is not None:
        nodes["readout"] = nir.Affine(net.readout_w, net.readout_b) if np.any(net.readout_b) else nir.Linear(net.readout_w)
        edges += [("recurrent", "readout"), ("readout", "output")]
    else:
        edges.append(("recurrent", "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(metadata or {}))


def _spec_metadata(spec: NetworkSpec, cfg: CubaLIFConfig, scales: list[LayerScale]) -> dict[str, Any]:
    def plain(v):
        return list(v) if isinstance(v, tuple) else v

    return {
        "format": META_FORMAT,
        "format_version": META_VERSION,
        "time_unit": "s",
        "spike_area_s": cfg.spike_area_ms * 1e-3,
        "doc": "input → input_affine → recurrent (CubaLIF ⇄ w_rec) → readout → output; the layered EP net as one "
               "population (neurohw docs/math.md eq. nir-map). The time average of the output over a read window is the "
               "network's output (mse: s of the output layer; ce_readout: the readout's scores).",
        "spec": {k: plain(getattr(spec, k)) for k in SPEC_FIELDS},
        "scenario": asdict(cfg),
        "blocks": [asdict(s) for s in scales],
        "tied": [True] + [ls.weight_backward is None for ls in spec.layers if not ls.readout][1:],
        "readout": any(ls.readout for ls in spec.layers),
    }


def export_nir(spec: NetworkSpec, cfg: CubaLIFConfig, path: str | Path) -> Path:
    """Write `spec` under the scenario `cfg` as a NIR file (atomically); ConfigError for what NIR cannot carry."""
    from neurohw.io.atomic import atomic_path

    nir = _nir()
    net, scales = from_spec(spec, cfg)
    meta = {META_KEY: json.dumps(_spec_metadata(spec, cfg, scales), sort_keys=True)}
    path = Path(path)
    with atomic_path(path) as tmp:
        nir.write(tmp, to_graph(net, meta))
    return path


# ------------------------------------------------------------------------------------ reading
def _describe(graph) -> str:
    nodes = ", ".join(f"{k}: {type(v).__name__}" for k, v in graph.nodes.items())
    return f"nodes {{{nodes}}}, edges {[tuple(e) for e in graph.edges]}"


def _arr(node, name: str, n: int) -> np.ndarray:
    value = np.asarray(getattr(node, name), dtype=np.float64)
    try:
        return np.broadcast_to(value, (n,)).copy()
    except ValueError:
        raise SpecError(f"CubaLIF parameter {name} has shape {value.shape}, expected ({n},)") from None


def _weight(node) -> tuple[np.ndarray, np.ndarray]:
    nir = _nir()
    w = np.asarray(node.weight, dtype=np.float64)
    if w.ndim != 2:
        raise SpecError(f"{type(node).__name__} weight of shape {w.shape}: neurohw reads 2-d (dense) weights")
    b = np.asarray(node.bias, dtype=np.float64) if isinstance(node, nir.Affine) else np.zeros(w.shape[0])
    return w, b


def from_graph(graph, where: str = "the graph") -> CubaLIFNet:
    """The CubaLIFNet of a NIR graph input → [Affine|Linear] → CubaLIF population (flat with a 2-cycle to an
    Affine/Linear, or a subgraph of that) → [Affine|Linear] → output; SpecError names what differs."""
    nir = _nir()
    fail = lambda problem: SpecError(f"{where}: {problem}; found {_describe(graph)}. neurohw reads input → Affine → "
                                     "CubaLIF population (with its recurrent Affine/Linear) → [Affine/Linear readout] → output")
    nodes, edges = graph.nodes, [tuple(e) for e in graph.edges]
    succ = {k: [b for a, b in edges if a == k] for k in nodes}
    pred = {k: [a for a, b in edges if b == k] for k in nodes}
    inputs = [k for k, v in nodes.items() if isinstance(v, nir.Input)]
    outputs = [k for k, v in nodes.items() if isinstance(v, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise fail(f"{len(inputs)} Input and {len(outputs)} Output nodes, expected one of each")
    # the population: a subgraph, or a CubaLIF with (optionally) a recurrent 2-cycle
    pops = [k for k, v in nodes.items() if isinstance(v, (nir.CubaLIF, nir.NIRGraph))]
    others = [k for k, v in nodes.items() if not isinstance(v, (nir.CubaLIF, nir.NIRGraph, nir.Input, nir.Output, nir.Affine, nir.Linear))]
    if others:
        raise fail(f"node(s) {others} of type {sorted({type(nodes[k]).__name__ for k in others})}, which the NIR scenario does not run")
    if len(pops) != 1:
        raise fail(f"{len(pops)} CubaLIF populations, expected one")
    pop = pops[0]
    rec_key = None
    if isinstance(nodes[pop], nir.NIRGraph):
        sub = nodes[pop]
        inner = from_graph_population(sub, f"{where}, subgraph '{pop}'")
        lif, w_rec, b_rec = inner
    else:
        lif = nodes[pop]
        cyc = [k for k in succ[pop] if pop in succ.get(k, []) and isinstance(nodes[k], (nir.Affine, nir.Linear))]
        if len(cyc) > 1:
            raise fail(f"{len(cyc)} recurrent weights around '{pop}', expected one")
        if cyc:
            rec_key = cyc[0]
            if pred[rec_key] != [pop] or succ[rec_key] != [pop]:
                raise fail(f"the recurrent weight '{rec_key}' must connect '{pop}' to itself only")
            w_rec, b_rec = _weight(nodes[rec_key])
        else:  # no recurrence: the size from the input weight (CubaLIF parameters may be scalars) or the parameters
            feed = [k for k in pred[pop] if isinstance(nodes[k], (nir.Affine, nir.Linear))]
            n = _weight(nodes[feed[0]])[0].shape[0] if len(feed) == 1 else np.asarray(lif.v_threshold).size
            w_rec, b_rec = np.zeros((n, n)), np.zeros(n)
    n = w_rec.shape[0]
    # the input path: Input → [Affine|Linear] → population
    into = [k for k in pred[pop] if k != rec_key]
    if len(into) != 1:
        raise fail(f"'{pop}' has {len(into)} inputs besides its recurrence, expected one")
    if into[0] == inputs[0]:
        affine_w, affine_b = np.eye(n), np.zeros(n)
    else:
        if pred[into[0]] != [inputs[0]] or not isinstance(nodes[into[0]], (nir.Affine, nir.Linear)):
            raise fail(f"the population's input '{into[0]}' must be an Affine/Linear node fed by the Input")
        affine_w, affine_b = _weight(nodes[into[0]])
    # the output path: population → [Affine|Linear] → Output
    out = [k for k in succ[pop] if k != rec_key]
    readout_w = readout_b = None
    if len(out) != 1:
        raise fail(f"'{pop}' feeds {len(out)} nodes besides its recurrence, expected one")
    if out[0] != outputs[0]:
        if succ[out[0]] != [outputs[0]] or pred[out[0]] != [pop] or not isinstance(nodes[out[0]], (nir.Affine, nir.Linear)):
            raise fail(f"the population's output '{out[0]}' must be an Affine/Linear readout feeding the Output")
        readout_w, readout_b = _weight(nodes[out[0]])
    params = {name: _arr(lif, name, n) for name in NEURON_PARAMS}
    try:
        return CubaLIFNet(affine_w, affine_b, w_rec, b_rec, readout_w=readout_w, readout_b=readout_b, **params)
    except ConfigError as e:
        raise SpecError(f"{where}: {e}") from None


def from_graph_population(sub, where: str):
    """(CubaLIF node, w_rec, b_rec) of a population subgraph: input → CubaLIF ⇄ Affine/Linear, CubaLIF → output."""
    nir = _nir()
    lifs = [v for v in sub.nodes.values() if isinstance(v, nir.CubaLIF)]
    recs = [k for k, v in sub.nodes.items() if isinstance(v, (nir.Affine, nir.Linear))]
    ins = [k for k, v in sub.nodes.items() if isinstance(v, nir.Input)]
    outs = [k for k, v in sub.nodes.items() if isinstance(v, nir.Output)]
    lif_key = [k for k, v in sub.nodes.items() if isinstance(v, nir.CubaLIF)]
    if len(lifs) != 1 or len(recs) > 1 or len(ins) != 1 or len(outs) != 1 or len(sub.nodes) != 3 + len(recs):
        raise SpecError(f"{where}: a population subgraph holds Input, one CubaLIF, at most one recurrent Affine/Linear and "
                        f"Output; found {_describe(sub)}")
    lk = lif_key[0]
    want = {(ins[0], lk), (lk, outs[0])} | ({(lk, recs[0]), (recs[0], lk)} if recs else set())
    if set(map(tuple, sub.edges)) != want:
        raise SpecError(f"{where}: expected edges {sorted(want)}; found {_describe(sub)}")
    n = np.asarray(lifs[0].v_threshold).size
    if recs:
        w, b = _weight(sub.nodes[recs[0]])
    else:
        w, b = np.zeros((n, n)), np.zeros(n)
    return lifs[0], w, b


def read_graph(path: str | Path):
    nir = _nir()
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: no such file")
    try:
        return nir.read(path)
    except Exception as e:  # nir raises ValueError, KeyError, OSError … on foreign or damaged files
        raise SpecError(f"{path}: not a readable NIR file ({type(e).__name__}: {e})") from None


def metadata(graph) -> dict[str, Any] | None:
    """neurohw's metadata document of a graph it wrote, else None."""
    raw = (graph.metadata or {}).get(META_KEY)
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError:
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == META_FORMAT else None


def read_nir(path: str | Path) -> tuple[CubaLIFNet, dict[str, Any] | None]:
    """(the network, neurohw's metadata or None) of a NIR file."""
    graph = read_graph(path)
    return from_graph(graph, str(path)), metadata(graph)


def spec_from_nir(path: str | Path) -> tuple[NetworkSpec, CubaLIFConfig]:
    """The NetworkSpec (and scenario) of a NIR file neurohw wrote: the exact inverse of `export_nir`."""
    net, meta = read_nir(path)
    if meta is None:
        raise SpecError(f"{path}: not written by neurohw export (no '{META_KEY}' metadata): its weights are in NIR's units "
                        "only; `neurohw simulate` runs it as it is")
    if meta.get("format_version") != META_VERSION:
        raise SpecError(f"{path}: neurohw NIR metadata version {meta.get('format_version')} is not supported (this neurohw reads {META_VERSION})")
    cfg = CubaLIFConfig(**meta["scenario"])
    scales = [LayerScale(**b) for b in meta["blocks"]]
    if scales != layer_scales([s.size for s in scales], cfg):
        raise SpecError(f"{path}: the recorded block factors differ from those of its recorded scenario")
    s = meta["spec"]
    tup = lambda v: tuple(v)
    spec_kw = {k: (tup(s[k]) if k in ("input_shape", "image_shape", "input_mean", "input_std") else s[k]) for k in SPEC_FIELDS}
    try:
        layers = to_layers(net, scales, cfg, list(meta["tied"]), bool(meta["readout"]), spec_kw["input_shape"])
    except ConfigError as e:
        raise SpecError(f"{path}: {e}") from None
    spec_kw["test_error"] = float("nan") if spec_kw["test_error"] is None else spec_kw["test_error"]
    spec_kw["val_error"] = float("nan") if spec_kw["val_error"] is None else spec_kw["val_error"]
    return NetworkSpec(layers=layers, **spec_kw), cfg


# ------------------------------------------------------------------------------------ snnTorch
def run_snntorch(path: str | Path, x: np.ndarray, n_steps: int, n_read: int) -> np.ndarray:
    """snnTorch's `import_from_nir` of the file, run for n_steps of its fixed Δt = 10⁻⁴ s on the inputs x (B, n_in)
    held constant; returns the time average of its output over the last n_read steps (B, n_out)."""
    import nir
    import torch
    from snntorch.import_nir import import_from_nir

    if not 0 < n_read <= n_steps:
        raise ConfigError(f"n_read must lie in (0, n_steps = {n_steps}], got {n_read}")
    with contextlib.redirect_stdout(io.StringIO()):  # snnTorch prints its graph rewriting
        module = import_from_nir(nir.read(path))
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
    total, state = None, None
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        for t in range(n_steps):
            out, state = module(xt, state)
            if t >= n_steps - n_read:
                total = out.double() if total is None else total + out.double()
    return (total / n_read).numpy()

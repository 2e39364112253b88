"""Connections between consecutive layers of a layered energy network (docs/math.md §Φ).

A connection `n` links state `s_n` to state `s_{n+1}` and contributes the term
`⟨s_{n+1}, D_n(s_n)⟩` to the primitive function Φ, where the drive `D_n` is

* dense:  `D_n(s) = W_n vec(s) + b_n`                                  (docs/math.md eq. Φ-fc)
* conv2d: `D_n(s) = P(W_n ⋆ s + b_n)`, `P` ∈ {2×2 max-pool, 2×2 avg-pool, none}  (eq. Φ-conv)

Each connection gives, in closed form and without autograd:

* `drive(s_in) -> (D(s_in), ctx)`: the forward drive on `s_{n+1}`; `ctx` holds what the feedback
  needs from the same evaluation (the max-pool indices);
* `feedback_add(base, s_out, ctx)`: `base + ∂⟨s_out, D(s_in)⟩/∂s_in`, the drive on `s_n` from above
  (a transposed matrix product, or the transposed convolution of the un-pooled state);
* `phi_grads(s_in, s_out, ctx)`: `∂⟨s_out, D(s_in)⟩/∂(W_n, b_n)` summed over the batch.

A dense connection built with `backward=True` carries untied feedback weights `weight_backward`
(same shape as `weight`): its feedback is `s_out @ weight_backward` instead of `s_out @ weight`
(vector-field dynamics of C-VF, docs/math.md §C-VF).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from neurohw.errors import ConfigError
from neurohw.spec import POOLS


_batched = torch._C._functorch.is_batchedtensor


def is_unit(scale: float | torch.Tensor) -> bool:
    """A scale known on the host to be 1 (a tensor scale, on the device, is always applied)."""
    return not isinstance(scale, torch.Tensor) and scale == 1.0


def fold_scale(scale: float | torch.Tensor, post: torch.Tensor) -> bool:
    """Whether a gradient's scale multiplies its (B × n) post-synaptic factor `post` before the product
    rather than the weight-shaped result: under torch.func.vmap (a population, neurohw/population.py),
    where the pass over K members' weight-shaped gradients costs more than the product's other work
    (fc1: a pass over 8 × 512 × 784 numbers against one over 8 × 20 × 512). A single net scales the
    results, in the order of the reference engine whose bits tests/equivalence/test_golden.py pins."""
    return not is_unit(scale) and _batched(post)


def scaled(grads: list[torch.Tensor], scale: float | torch.Tensor) -> list[torch.Tensor]:
    """The fresh tensors `grads` times `scale`, in place."""
    return grads if is_unit(scale) else [t.mul_(scale) for t in grads]


def addmm(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """c + alpha·(a @ b), a fresh tensor: one `torch.addmm`; under torch.func.vmap (a population of nets,
    neurohw/population.py) a product then in-place sums, which vmap batches as one bmm — its rule for addmm
    is about 2× slower on the CPU (measured: 11.8 ms against 5.4 ms for 3 members of (1000×10)·(10×512)).
    There alpha multiplies the smallest of a, b and a @ b: a pass over a (20×10) state instead of over a
    (20×512) product in a relaxation step, over a (512×20) state instead of a (512×784) weight-shaped
    product in the ∂Φ/∂θ contrast."""
    if _batched(a) or _batched(b):
        if alpha != 1.0:
            m, inner, n = a.shape[-2], a.shape[-1], b.shape[-1]
            smallest = min(m * inner, inner * n, m * n)
            if smallest == m * inner:
                a = a * alpha
            elif smallest == inner * n:
                b = b * alpha
            else:
                return (a @ b).mul_(alpha).add_(c)
        return (a @ b).add_(c)
    return torch.addmm(c, a, b, alpha=alpha)


class LowPrecision:
    """Lower-precision operands for one phase's products (train.precision = "bf16"; docs/math.md
    eq. precision): the state and weight operands of the drives and feedbacks are rounded to `dtype`,
    products are accumulated and returned in the state's dtype (fp32). States, their differences, the
    parameters, the optimizer and the ∂Φ/∂θ contrast never leave fp32. Each weight is cast once per
    phase (cached by storage, shape and strides); on the CPU, which has no bf16 → fp32 product, the
    rounded operands are multiplied in fp32 (the same numbers up to the order of the sums).
    """

    def __init__(self, dtype: torch.dtype):
        self.dtype, self._weights = dtype, {}

    def operand(self, t: torch.Tensor) -> torch.Tensor:
        low = t.to(self.dtype)
        return low if t.is_cuda else low.to(t.dtype)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
        if key not in self._weights:
            self._weights[key] = self.operand(t)
        return self._weights[key]

    def addmm(self, c: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """c + alpha·(a @ b), a an activation, b a weight (a fresh tensor of c's dtype)."""
        a, b = self.operand(a), self.weight(b)
        if a.is_cuda:
            return torch.addmm(c, a, b, out_dtype=c.dtype, alpha=alpha)
        return torch.addmm(c, a, b, alpha=alpha)

    def conv2d(self, s: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: int, padding: int) -> torch.Tensor:
        out = F.conv2d(self.operand(s), self.weight(w), None if b is None else self.weight(b), stride, padding)
        return out.to(s.dtype)

    def conv_transpose2d(self, s: torch.Tensor, w: torch.Tensor, stride: int, padding: int, output_padding) -> torch.Tensor:
        return F.conv_transpose2d(self.operand(s), self.weight(w), None, stride, padding, output_padding).to(s.dtype)


def _init_uniform(tensors: list[torch.Tensor], fan_in: int, gain: float, generator: torch.Generator) -> None:
    """PyTorch's default Linear/Conv initialisation U(−1/√fan_in, 1/√fan_in), times `gain`."""
    bound = gain / math.sqrt(fan_in)
    with torch.no_grad():
        for t in tensors:
            nn.init.uniform_(t, -bound, bound, generator=generator)


class Dense(nn.Module):
    """`D(s) = W vec(s) + b`, W of shape (out_features, prod(in_shape)) (PyTorch's Linear convention)."""

    kind = "dense"

    def __init__(self, in_shape: tuple[int, ...], out_features: int, *, backward: bool = False):
        super().__init__()
        self.in_shape = tuple(int(d) for d in in_shape)
        self.in_features = math.prod(self.in_shape)
        self.out_shape = (int(out_features),)
        self.weight = nn.Parameter(torch.empty(out_features, self.in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.weight_backward = nn.Parameter(torch.empty(out_features, self.in_features)) if backward else None
        self.needs_ctx = False

    def reset_parameters(self, generator: torch.Generator, gain: float = 1.0) -> None:
        _init_uniform([self.weight, self.bias], self.in_features, gain, generator)
        if self.weight_backward is not None:
            with torch.no_grad():
                self.weight_backward.copy_(self.weight)

    def drive(self, s_in: torch.Tensor, lp: LowPrecision | None = None) -> tuple[torch.Tensor, None]:
        if lp is not None:
            return lp.addmm(self.bias, s_in.flatten(1), self.weight.t()), None
        return addmm(self.bias, s_in.flatten(1), self.weight.t()), None

    def feedback_add(self, base: torch.Tensor, s_out: torch.Tensor, ctx: None, lp: LowPrecision | None = None) -> torch.Tensor:
        w = self.weight if self.weight_backward is None else self.weight_backward
        if lp is not None:
            return lp.addmm(base.flatten(1), s_out, w).view(base.shape)
        return addmm(base.flatten(1), s_out, w).view(base.shape)

    def feedback(self, s_out: torch.Tensor, ctx: None) -> torch.Tensor:
        w = self.weight if self.weight_backward is None else self.weight_backward
        return (s_out @ w).view(-1, *self.in_shape)

    def phi_grads(self, s_in: torch.Tensor, s_out: torch.Tensor, ctx: None) -> list[torch.Tensor]:
        return [s_out.t() @ s_in.flatten(1), s_out.sum(0)]

    def phi_grads_diff(self, s_in_a, s_out_a, ctx_a, s_in_b, s_out_b, ctx_b, scale=1.0) -> list[torch.Tensor]:
        """`scale` · (phi_grads at a minus phi_grads at b), `scale` a number or a 0-dim tensor; one
        matrix product when the input is shared (x). In a population the scale multiplies the
        post-synaptic states (`fold_scale`)."""
        fold = fold_scale(scale, s_out_a)
        if s_in_a is s_in_b:
            d = s_out_a - s_out_b
            if fold:
                d.mul_(scale)
            grads = [d.t() @ s_in_a.flatten(1), d.sum(0)]
        else:
            if fold:
                s_out_a, s_out_b = s_out_a * scale, s_out_b * scale
            dw = addmm(s_out_a.t() @ s_in_a.flatten(1), s_out_b.t(), s_in_b.flatten(1), alpha=-1.0)
            grads = [dw, s_out_a.sum(0) - s_out_b.sum(0)]
        return grads if fold else scaled(grads, scale)

    def extra_repr(self) -> str:
        tied = "" if self.weight_backward is None else ", untied feedback"
        return f"in_shape={self.in_shape}, out_features={self.out_shape[0]}{tied}"


class Conv2d(nn.Module):
    """`D(s) = P(W ⋆ s + b)` with W of shape (out_ch, in_ch, k, k) and P a 2×2 pool or none."""

    kind = "conv2d"

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        pool: str = "max2",
    ):
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"unknown pool '{pool}'; valid: {', '.join(POOLS)}")
        if len(in_shape) != 3:
            raise ConfigError(f"a conv2d layer needs a (channels, height, width) input, got shape {tuple(in_shape)}")
        c, h, w = (int(d) for d in in_shape)
        self.in_shape = (c, h, w)
        self.stride, self.padding, self.pool, self.kernel_size = int(stride), int(padding), pool, int(kernel_size)
        hc = (h + 2 * self.padding - self.kernel_size) // self.stride + 1
        wc = (w + 2 * self.padding - self.kernel_size) // self.stride + 1
        if hc < 1 or wc < 1 or (pool != "none" and (hc < 2 or wc < 2)):
            raise ConfigError(
                f"conv2d layer with kernel {kernel_size}, stride {stride}, padding {padding}, pool {pool} "
                f"does not fit its input of shape {self.in_shape}"
            )
        self.conv_shape = (int(out_channels), hc, wc)
        self.out_shape = (int(out_channels), hc // 2, wc // 2) if pool != "none" else self.conv_shape
        # output_padding of the transposed convolution that restores the input's spatial size
        self._output_padding = (
            h - ((hc - 1) * self.stride - 2 * self.padding + self.kernel_size),
            w - ((wc - 1) * self.stride - 2 * self.padding + self.kernel_size),
        )
        self.weight = nn.Parameter(torch.empty(out_channels, c, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.weight_backward = None
        self.needs_ctx = pool == "max2"

    def reset_parameters(self, generator: torch.Generator, gain: float = 1.0) -> None:
        _init_uniform([self.weight, self.bias], self.in_shape[0] * self.kernel_size**2, gain, generator)

    def drive(self, s_in: torch.Tensor, lp: LowPrecision | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if lp is not None:
            y = lp.conv2d(s_in, self.weight, self.bias, self.stride, self.padding)
        else:
            y = F.conv2d(s_in, self.weight, self.bias, self.stride, self.padding)
        if self.pool == "max2":
            return F.max_pool2d(y, 2, return_indices=True)
        if self.pool == "avg2":
            return F.avg_pool2d(y, 2), None
        return y, None

    def unpool(self, s_out: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """∂⟨s_out, P(y)⟩/∂y: the state routed back to the convolution's output grid."""
        if self.pool == "max2":
            # max-unpooling as a scatter onto the convolution's grid (the same numbers as F.max_unpool2d,
            # which torch.func.vmap cannot batch: a population of nets runs this under vmap)
            b, c = s_out.shape[:2]
            grid = s_out.new_zeros(b, c, self.conv_shape[1] * self.conv_shape[2])
            return grid.scatter(2, ctx.flatten(2), s_out.flatten(2)).view(b, c, *self.conv_shape[1:])
        if self.pool == "avg2":
            g = s_out.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3).mul(0.25)
            dh, dw = self.conv_shape[1] - g.shape[2], self.conv_shape[2] - g.shape[3]
            return F.pad(g, (0, dw, 0, dh)) if dh or dw else g
        return s_out

    def feedback(self, s_out: torch.Tensor, ctx: torch.Tensor | None, lp: LowPrecision | None = None) -> torch.Tensor:
        if lp is not None:
            return lp.conv_transpose2d(self.unpool(s_out, ctx), self.weight, self.stride, self.padding, self._output_padding)
        return F.conv_transpose2d(
            self.unpool(s_out, ctx), self.weight, None, self.stride, self.padding, self._output_padding
        )

    def feedback_add(
        self, base: torch.Tensor, s_out: torch.Tensor, ctx: torch.Tensor | None, lp: LowPrecision | None = None
    ) -> torch.Tensor:
        fb = self.feedback(s_out, ctx, lp)
        return fb.add_(base) if not torch.is_grad_enabled() else base + fb

    def phi_grads(self, s_in: torch.Tensor, s_out: torch.Tensor, ctx: torch.Tensor | None) -> list[torch.Tensor]:
        g = self.unpool(s_out, ctx)
        dw = torch.nn.grad.conv2d_weight(s_in, self.weight.shape, g, self.stride, self.padding)
        return [dw, g.sum((0, 2, 3))]

    def phi_grads_diff(self, s_in_a, s_out_a, ctx_a, s_in_b, s_out_b, ctx_b, scale=1.0) -> list[torch.Tensor]:
        """`scale` · (phi_grads at a minus phi_grads at b); one weight gradient when the input is shared
        (x). The scale multiplies the gradients (a conv layer's kernel is far smaller than its
        post-synaptic maps)."""
        if s_in_a is s_in_b:
            g = self.unpool(s_out_a, ctx_a) - self.unpool(s_out_b, ctx_b)
            dw = torch.nn.grad.conv2d_weight(s_in_a, self.weight.shape, g, self.stride, self.padding)
            grads = [dw, g.sum((0, 2, 3))]
        else:
            grads = [a - b for a, b in zip(self.phi_grads(s_in_a, s_out_a, ctx_a), self.phi_grads(s_in_b, s_out_b, ctx_b))]
        return scaled(grads, scale)

    def extra_repr(self) -> str:
        return (
            f"in_shape={self.in_shape}, out_channels={self.conv_shape[0]}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, pool={self.pool}, out_shape={self.out_shape}"
        )


Connection = Dense | Conv2d

"""The exact l2 path norm (Neyshabur, Tomioka and Srebro 2015) of the eval-mode network."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import fx, nn

from normdyn.core.errors import MeasureError
from normdyn.core.hookspecs import hookimpl

__all__ = ["PathNorm", "check_covered", "squared_pass"]

COVERAGE = (
    "path_norm covers networks built of Linear/Conv1d/Conv2d/Conv3d layers, ReLU or LeakyReLU, "
    "max/avg pooling (plain AvgPool without padding or ceil_mode, or adaptive), BatchNorm in eval mode "
    "with running statistics, Flatten/Dropout/Identity, flatten/view/reshape, residual additions of "
    "two tensors and scaling by a constant"
)

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_PASS_THROUGH = (nn.ReLU, nn.LeakyReLU, nn.Dropout, nn.Identity)  # identity on the non-negative squared pass
_AS_IS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Flatten)
_AVG = (nn.AvgPool1d, nn.AvgPool2d)
_ADAPTIVE_AVG = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_COVERED = _WEIGHTED + _BATCHNORM + _PASS_THROUGH + _AS_IS + _AVG + _ADAPTIVE_AVG

_ADD = {operator.add, operator.iadd, torch.add}
_SCALE = {operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv, torch.div}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape}
_RELU_FUNCTIONS = {torch.relu, F.relu}
_RESHAPE_METHODS = {"flatten", "view", "reshape"}


def _refuse(what: str) -> MeasureError:
    return MeasureError(f"{COVERAGE}; {what} of this model is not covered")


def check_covered(model: nn.Module) -> fx.GraphModule:
    """The model traced by torch.fx, after checking that every module and operation is covered.

    Raises MeasureError naming :data:`COVERAGE` and the first module or
    operation that is not covered, before anything is computed.
    """
    for name, m in model.named_modules():
        if next(m.children(), None) is None and name and not isinstance(m, _COVERED):
            raise _refuse(f"module {name!r} ({type(m).__name__})")
        if isinstance(m, _BATCHNORM) and m.running_mean is None:
            raise _refuse(f"module {name!r} (BatchNorm without running statistics: batch statistics in eval mode)")
        if isinstance(m, _AVG) and (any(_tuple(m.padding)) or m.ceil_mode):
            raise _refuse(f"module {name!r} ({type(m).__name__} with padding or ceil_mode)")
    try:
        traced = fx.symbolic_trace(model)
    except Exception as exc:  # any tracing failure means the graph cannot be checked
        raise _refuse(f"the forward pass (torch.fx cannot trace it: {exc})") from None
    for node in traced.graph.nodes:
        if node.op == "get_attr":
            raise _refuse(f"parameter or buffer {node.target!r} used outside a layer")
        if node.op == "call_function" and not _covered_function(node):
            raise _refuse(f"operation {getattr(node.target, '__name__', node.target)!r} (node {node.name})")
        if node.op == "call_method" and node.target not in _RESHAPE_METHODS | {"relu"}:
            raise _refuse(f"method .{node.target}() (node {node.name})")
    return traced


def _covered_function(node: fx.Node) -> bool:
    tensors = [a for a in node.args if isinstance(a, fx.Node)]
    if node.target in _ADD:
        return len(tensors) == 2 and len(node.args) == 2 and not node.kwargs
    if node.target in _SCALE:
        other = [a for a in node.args if not isinstance(a, fx.Node)]
        divides_by_tensor = node.target in (operator.truediv, operator.itruediv, torch.div) and node.args[0] in other
        return len(tensors) == 1 and len(other) == 1 and isinstance(other[0], (int, float)) and not divides_by_tensor
    return node.target in _RESHAPE_FUNCTIONS | _RELU_FUNCTIONS


def _tuple(v: int | tuple[int, ...]) -> tuple[int, ...]:
    return v if isinstance(v, tuple) else (v,)


def _channels(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over dim 1 of an ``ndim``-dimensional tensor."""
    return v.reshape(-1, *([1] * (ndim - 2)))


def _tensor(m: nn.Module, name: str) -> torch.Tensor | None:
    """Parameter or buffer ``name`` of ``m`` in float64 (None when absent)."""
    t = getattr(m, name, None)
    return t.double() if isinstance(t, torch.Tensor) else None


def _bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, c) with BN(x) = a x + c per channel in eval mode: a = gamma/sqrt(var+eps), c = beta - a mean."""
    var, mean = _tensor(bn, "running_var"), _tensor(bn, "running_mean")
    assert var is not None and mean is not None  # check_covered refuses BatchNorm without running statistics
    gamma, beta = _tensor(bn, "weight"), _tensor(bn, "bias")
    gamma = torch.ones_like(var) if gamma is None else gamma
    beta = torch.zeros_like(var) if beta is None else beta
    a = gamma / torch.sqrt(var + cast(float, bn.eps))
    return a, beta - a * mean


def _folded(m: nn.Module, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's (weight, bias) in float64, with a following BatchNorm folded in."""
    w, b = _tensor(m, "weight"), _tensor(m, "bias")
    assert w is not None  # every covered Linear/Conv has a weight
    if bn is None:
        return w, b
    a, c = _bn_affine(bn)
    w = a.reshape(-1, *([1] * (w.dim() - 1))) * w
    return w, c if b is None else a * b + c


def _window_sizes(n_in: int, n_out: int) -> torch.Tensor:
    """Number of inputs in each adaptive-pooling window: end - start, PyTorch's floor/ceil rule."""
    return torch.tensor([math.ceil((o + 1) * n_in / n_out) - (o * n_in) // n_out for o in range(n_out)])


def _adaptive_divisor(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The per-output window size of an adaptive average pool from input ``x`` to output ``out``."""
    dims = range(2, x.dim())
    sizes = [_window_sizes(x.shape[d], out.shape[d]).double() for d in dims]
    grid = sizes[0]
    for s in sizes[1:]:
        grid = grid[:, None] * s
    return grid.to(out.device)


def _bn_folds(traced: fx.GraphModule) -> tuple[dict[str, nn.Module], set[str]]:
    """BatchNorm nodes that directly follow a Linear/Conv used only by them: {layer node: bn}, folded BN nodes."""
    folds: dict[str, nn.Module] = {}
    folded: set[str] = set()
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(traced.get_submodule(str(node.target)), _BATCHNORM):
            continue
        src = node.args[0]
        if (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and isinstance(traced.get_submodule(str(src.target)), _WEIGHTED)
            and len(src.users) == 1
        ):
            folds[src.name] = traced.get_submodule(str(node.target))
            folded.add(node.name)
    return folds, folded


def squared_pass(traced: fx.GraphModule, inputs: torch.Tensor) -> torch.Tensor:
    """The forward pass of the squared network (see :class:`PathNorm`) of a checked, traced model."""
    folds, folded = _bn_folds(traced)
    env: dict[fx.Node, Any] = {}
    result: Any = None
    for node in traced.graph.nodes:
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "placeholder":
            env[node] = inputs
        elif node.op == "output":
            result = args[0]
        elif node.op == "call_module":
            env[node] = _module_step(
                traced.get_submodule(str(node.target)), args[0], folds.get(node.name), node.name in folded
            )
        else:
            env[node] = _function_step(node, args, kwargs)
    return result


def _module_step(m: nn.Module, x: torch.Tensor, bn: nn.Module | None, is_folded: bool) -> torch.Tensor:
    if isinstance(m, _WEIGHTED):
        w, b = _folded(m, bn)
        sq_b = None if b is None else b**2
        return F.linear(x, w**2, sq_b) if isinstance(m, nn.Linear) else m._conv_forward(x, w**2, sq_b)
    if isinstance(m, _BATCHNORM):
        if is_folded:
            return x
        a, c = _bn_affine(m)
        return _channels(a**2, x.dim()) * x + _channels(c**2, x.dim())
    if isinstance(m, _PASS_THROUGH):
        return x
    if isinstance(m, _AVG):
        dims = x.dim() - 2  # an int kernel_size k means k in every spatial dimension
        kernel = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * dims
        return m(x) / (getattr(m, "divisor_override", None) or math.prod(kernel))  # padding 0: every window is full
    if isinstance(m, _ADAPTIVE_AVG):
        out = m(x)
        return out / _adaptive_divisor(x, out)
    return m(x)


def _function_step(node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if node.op == "call_method":
        if node.target == "relu":
            return args[0]
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    target: Callable[..., Any] = node.target  # type: ignore[assignment]
    if target in _RELU_FUNCTIONS:
        return args[0]
    if target in _SCALE:
        tensor = next(a for a in args if isinstance(a, torch.Tensor))
        c = float(next(a for a in args if not isinstance(a, torch.Tensor)))
        return tensor / c**2 if target in (operator.truediv, operator.itruediv, torch.div) else tensor * c**2
    if target in _ADD:
        return args[0] + args[1]
    return target(*args, **kwargs)


class PathNorm:
    """l2 path norm of the eval-mode network, refused for networks it is not defined on.

    ||theta||_path = sqrt( max_sigma sum_{p in paths(G_sigma)} prod_{e in p} w_e^2 ),

    G the eval-mode network as a graph of units: a Linear/Conv layer's
    weights are its edges; a BatchNorm right after a Linear/Conv (used by
    nothing else) is folded into it, W' = a W, b' = a b + c with
    a = gamma/sqrt(running_var + eps), c = beta - a running_mean (any other
    BatchNorm is its own per-channel layer x -> a x + c); a bias b is an edge
    of weight b from a constant-1 unit; an average pool's output has edges
    of weight 1/d from the d inputs of its window (squared: 1/d^2);
    residual additions, flatten and reshape are edges of weight 1; ReLU,
    LeakyReLU, dropout and identity add no weight; multiplying by a
    constant c is an edge of weight c. Paths run from an input or constant-1
    unit to an output unit. A max-pool unit is given exactly one in-edge
    (weight 1) from one unit of its window; sigma ranges over all such
    choices, so without max-pooling this is exactly Neyshabur et al.'s l2
    path norm, and with it the largest l2 path norm of the linear networks
    the max-pool network can switch to.

    Computed exactly by one float64 forward pass of the squared network on
    an all-ones input of the model's ``input_shape``: every edge weight
    squared, so each unit holds s(u) = sum over paths into u of the squared
    products; a max-pool keeps the largest s(u) of its window (the best
    choice per unit is the best choice overall, since every later map is
    non-decreasing in non-negative values; the convention of Jiang et al.
    2020); the result is sqrt(sum of the outputs).

    Coverage is decided from the rebuilt model's module types and its
    torch.fx graph before computing (:data:`COVERAGE`); anything else
    (LayerNorm, softmax attention, GELU, parameters used outside a layer,
    an untraceable forward) is refused with a MeasureError naming the
    module or operation. Needs the rebuilt model.
    """

    name = "path_norm"
    version = "2"
    needs = frozenset({"model"})
    params: dict[str, Any] = {}

    def compute(self, view: Any, state: dict[str, Any]) -> float:
        shape = view.context.model_spec.get("input_shape")
        if not shape:
            raise MeasureError("path_norm needs model_spec['input_shape'] to build the all-ones input")
        model = view.module()
        if state.get("module") is not model:  # the run's module is built once; its graph is checked once
            state["traced"], state["module"] = check_covered(model), model
        traced = state["traced"]
        ones = torch.ones(1, *[int(s) for s in shape], dtype=torch.float64, device=view.device)
        with torch.no_grad():
            out = squared_pass(traced, ones)
        return math.sqrt(float(out.sum()))


@hookimpl
def register_measures(register: Any) -> None:
    register(PathNorm())

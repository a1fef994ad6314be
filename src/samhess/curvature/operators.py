"""The matrix-free curvature operator: what the Hessian, GGN and Fisher share.

A curvature operator :math:`A` is a symmetric ``dim x dim`` matrix over the flat parameter
vector (layout of :mod:`samhess.curvature.vectors`), averaged over the data
(:func:`samhess.curvature.data.mean_over_data`), that is only ever applied to vectors:
``A @ v`` for ``v`` of shape ``(dim,)`` and ``A @ V`` for ``V`` of shape ``(dim, k)``.

The model is evaluated through :func:`torch.func.functional_call` on detached copies of its
parameters, so products never touch ``.grad`` and never update BatchNorm running statistics,
with scaled-dot-product attention on the math kernel (:mod:`samhess.curvature.attention`), so
attention models can be differentiated twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from samhess.curvature.attention import math_attention
from samhess.curvature.batches import model_arguments, tensors_in
from samhess.curvature.data import (
    check_data,
    holds_single_batch,
    iterate_batches,
    local_data,
    mean_over_data,
)
from samhess.curvature.units import weight_rule
from samhess.curvature.vectors import trainable_parameters, unflatten
from samhess.distributed.collectives import ShardedData


def resolve_parameters(model: nn.Module, params: Iterable[torch.Tensor] | None) -> list[nn.Parameter]:
    """The parameters an operator differentiates with respect to, with their checks.

    Args:
        model: the network.
        params: parameters of ``model`` (a subset gives the corresponding diagonal block of the
            curvature), or ``None`` for every parameter that requires a gradient.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: if there is no parameter, one is not in ``model``, is repeated, or the
            parameters differ in dtype or device or are not floating point.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if params is None:
        chosen = trainable_parameters(model)
        if not chosen:
            raise ValueError("model has no trainable parameters (none requires a gradient)")
    else:
        if isinstance(params, torch.Tensor):
            params = [params]
        chosen = list(params)
        if not chosen:
            raise ValueError("params is empty; pass None for every trainable parameter")
        owned = {id(p) for p in model.parameters()}
        seen: set[int] = set()
        for index, p in enumerate(chosen):
            if id(p) not in owned:
                raise ValueError(f"params[{index}] (shape {tuple(p.shape)}) is not a parameter of model")
            if id(p) in seen:
                raise ValueError(f"params[{index}] appears more than once")
            seen.add(id(p))
    if not chosen[0].is_floating_point():
        raise ValueError(f"parameters must be floating point, got {chosen[0].dtype}")
    for p in chosen:
        if p.dtype != chosen[0].dtype or p.device != chosen[0].device:
            raise ValueError(
                "all parameters must share one dtype and device, got "
                f"{chosen[0].dtype}/{chosen[0].device} and {p.dtype}/{p.device}"
            )
    return chosen


@contextlib.contextmanager
def evaluation_mode(model: nn.Module, eval_mode: bool) -> Iterator[None]:
    """Put ``model`` in eval mode if ``eval_mode``; restore every submodule's flag on exit."""
    if not eval_mode:
        yield
        return
    flags = [(module, module.training) for module in model.modules()]
    if not any(training for _, training in flags):
        yield
        return
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


class CurvatureOperator:
    """A symmetric curvature matrix of the mean loss over ``data``, applied matrix-free.

    Subclasses define the product of one batch (:meth:`_batch_product`); this class handles
    parameters, train/eval mode, data averaging, shapes, counting and the non-finite-loss check.

    Attributes:
        model: the network, called as ``model(inputs)``, ``model(*inputs)`` or
            ``model(**inputs)`` (:mod:`samhess.curvature.batches`).
        loss_fn: ``loss_fn(outputs, targets)``, the batch-mean loss.
        data: one ``(inputs, targets)`` batch or a re-iterable collection of batches.
        weight_of: ``weight_of(targets)``, the units the loss averages over in a batch, or
            ``None`` for the loss's own (:mod:`samhess.curvature.units`).
        params: the parameters, in the order of the flat layout.
        dim: :math:`\\sum_i` ``params[i].numel()``.
        dtype: the parameters' dtype (data is cast to it).
        device: the parameters' device (data is moved to it).
        eval_mode: whether the model is evaluated in eval mode (BatchNorm, dropout).
        num_matvecs: matrix-vector products computed so far (a product with ``k`` columns
            counts ``k``); reset it by assigning 0.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        data: Any,
        params: Iterable[torch.Tensor] | None = None,
        *,
        eval_mode: bool = True,
        cache_graph: bool = True,
        weight_of: Callable[[Any], Any] | None = None,
    ) -> None:
        self.params = resolve_parameters(model, params)
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        check_data(data)
        self.model = model
        self.loss_fn = loss_fn
        self.data = data
        self.weight_of = weight_of
        self._weight = weight_rule(loss_fn, weight_of)
        self.eval_mode = bool(eval_mode)
        self.cache_graph = bool(cache_graph)
        self.dim = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.num_matvecs = 0
        chosen = {id(p) for p in self.params}
        by_id = {id(p): name for name, p in model.named_parameters()}
        self._names = [by_id[id(p)] for p in self.params]
        self._other_names = [name for name, p in model.named_parameters() if id(p) not in chosen]
        self._watched = [*model.parameters(), *model.buffers()]
        self._cached_state: Any = None
        self._cached_key: tuple | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(dim, dim)``."""
        return (self.dim, self.dim)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, dtype={self.dtype}, device={self.device})"

    # ----------------------------------------------------------------------------- products
    def __matmul__(self, vectors: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``A @ v`` for ``v`` of shape ``(dim,)``, or ``A @ V`` for ``V`` of shape ``(dim, k)``.

        The input is converted to the operator's dtype and device; the result has that dtype and
        device and the input's shape.

        Raises:
            ValueError: if the shape is neither ``(dim,)`` nor ``(dim, k)``, or the loss is not
                finite on the data.
        """
        vectors = torch.as_tensor(vectors).to(device=self.device, dtype=self.dtype)
        if vectors.ndim == 1 and vectors.shape[0] == self.dim:
            return self._product(vectors.unsqueeze(0))[0]
        if vectors.ndim == 2 and vectors.shape[0] == self.dim:
            if vectors.shape[1] == 0:
                return vectors.clone()
            return self._product(vectors.T.contiguous()).T
        raise ValueError(
            f"v must have shape ({self.dim},) or ({self.dim}, k), got {tuple(vectors.shape)}"
        )

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """``A @ vector`` (same as the ``@`` operator)."""
        return self @ vector

    def _product(self, rows: torch.Tensor) -> torch.Tensor:
        """Products with the ``k`` rows of ``rows`` (shape ``(k, dim)``), as rows."""
        if self.cache_graph and holds_single_batch(self.data) and not isinstance(self.data, ShardedData):
            # One batch is the whole data, so its mean is the mean over data: a product is one
            # backward pass through the batch's kept graph, with no weighting or reduction.
            products = self._products_on(self._kept_state(), rows)
            self.num_matvecs += rows.shape[0]
            return products
        (products, loss), _ = mean_over_data(
            lambda inputs, targets: self._batch_product(inputs, targets, rows),
            self.data,
            device=self.device,
            dtype=self.dtype,
            weight=self._weight,
        )
        # Checked on every product, a kept graph's included: here a graph is kept only for a
        # sharded batch, whose mean also holds the other ranks' losses, and their graphs may have
        # been rebuilt; every rank checks alike.
        try:
            check_finite_loss(loss, "curvature")
        except ValueError:
            self._cached_state = self._cached_key = None
            raise
        self.num_matvecs += rows.shape[0]
        return products

    def _batch_product(
        self, inputs: Any, targets: Any, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(products of the batch-mean curvature with rows, batch-mean loss)``."""
        state = self._state_for(inputs, targets)
        return self._products_on(state, rows), state.loss

    def _products_on(self, state: Any, rows: torch.Tensor) -> torch.Tensor:
        """The batch curvature of ``state`` applied to each row, written into one new tensor."""
        products = torch.empty_like(rows)
        for row, product in zip(rows, products):
            pieces = self._apply(state, unflatten(row, self.params))
            torch.cat([piece.reshape(-1) for piece in pieces], out=product)
        return products

    def _prepare(self, inputs: Any, targets: Any) -> Any:
        """Build what products on this batch need (graphs, samples); has a ``loss`` attribute."""
        raise NotImplementedError

    def _apply(self, state: Any, vector: list[torch.Tensor]) -> Sequence[torch.Tensor]:
        """The batch curvature applied to one vector given as tensors shaped like ``params``."""
        raise NotImplementedError

    def _state_for(self, inputs: Any, targets: Any) -> Any:
        """:meth:`_prepare`, kept between products (:meth:`_cached`) when this rank's data is a
        single batch of a ``ShardedData``; an unsharded single batch takes :meth:`_kept_state`."""
        if not (self.cache_graph and holds_single_batch(self.data)):
            return self._prepare(inputs, targets)
        return self._cached(lambda: self._prepare(inputs, targets))

    def _kept_state(self) -> Any:
        """The state of the single batch, rebuilt when a parameter, buffer or the batch changed.

        Its loss is checked once, when it is built.
        """

        def build() -> Any:
            ((inputs, targets),) = iterate_batches(self.data, device=self.device, dtype=self.dtype)
            if isinstance(targets, torch.Tensor) and targets.numel() == 0:
                raise ValueError("data holds no examples")
            state = self._prepare(inputs, targets)
            check_finite_loss(state.loss, "curvature")
            return state

        return self._cached(build)

    def _cached(self, build: Callable[[], Any]) -> Any:
        """The kept state, or ``build()`` kept in its place when the version key has moved.

        The key moves when a parameter, buffer or the batch changes in place (their version
        counters), so an operator built before a training step stays correct.
        """
        key = self._version_key()
        if self._cached_key != key:
            self._cached_state = self._cached_key = None  # free the old graph before building a new one
            self._cached_state = build()
            self._cached_key = key
        return self._cached_state

    def _version_key(self) -> tuple:
        # The batch as given, not its copy cast to ``dtype``: a fresh copy each product would
        # never match, and the original's version counter is the one in-place edits move.
        batch = tensors_in(local_data(self.data))
        mode = None if self.eval_mode else self.model.training
        return (mode, *((t._version, t.data_ptr()) for t in (*self._watched, *batch)))

    # ----------------------------------------------------------------------------- the model
    def _leaves(self) -> list[torch.Tensor]:
        """Detached copies of ``params`` (sharing storage) that autograd differentiates."""
        return [p.detach().requires_grad_(True) for p in self.params]

    def _outputs(self, values: Sequence[torch.Tensor], inputs: Any) -> Any:
        """The model's outputs with ``params`` replaced by ``values``, in eval mode if ``eval_mode``.

        Only here does the model run, so only here is its mode switched and its attention put
        on the math kernel: a product on a kept graph does not touch either.
        """
        named = dict(self.model.named_parameters())
        tensors = {name: named[name].detach() for name in self._other_names}
        tensors.update(zip(self._names, values))
        if not self.eval_mode:
            # In train mode BatchNorm writes its running averages: give it copies to write to.
            tensors.update({name: b.clone() for name, b in self.model.named_buffers()})
        args, kwargs = model_arguments(inputs)
        with evaluation_mode(self.model, self.eval_mode), math_attention():
            return functional_call(self.model, tensors, args, kwargs)

    # ----------------------------------------------------------------------------- conversions
    def as_linear_operator(self):
        """This operator as a :class:`scipy.sparse.linalg.LinearOperator` (NumPy in and out).

        Products made through it count in :attr:`num_matvecs`.
        """
        from scipy.sparse.linalg import LinearOperator

        np_dtype = torch.empty((), dtype=self.dtype).numpy().dtype

        def apply(x: np.ndarray) -> np.ndarray:
            result = self @ torch.from_numpy(np.ascontiguousarray(x))
            return result.detach().cpu().numpy()

        return LinearOperator(
            (self.dim, self.dim), matvec=apply, rmatvec=apply, matmat=apply, rmatmat=apply, dtype=np_dtype
        )

    def to_dense(self, block_size: int = 256) -> torch.Tensor:
        """The ``(dim, dim)`` matrix, from products with blocks of identity columns (``dim`` matvecs)."""
        columns = []
        for start in range(0, self.dim, block_size):
            stop = min(start + block_size, self.dim)
            columns.append(self @ identity_columns(self.dim, start, stop, dtype=self.dtype, device=self.device))
        return torch.cat(columns, dim=1)


def identity_columns(
    dim: int, start: int, stop: int, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Columns ``start:stop`` of the ``dim x dim`` identity, shape ``(dim, stop - start)``."""
    block = torch.zeros(dim, stop - start, dtype=dtype, device=device)
    block[start:stop].fill_diagonal_(1)
    return block


def check_finite_loss(loss: torch.Tensor, quantity: str) -> None:
    """Raise ``ValueError`` if the mean ``loss`` is not finite: its ``quantity`` is undefined."""
    if not torch.isfinite(loss):
        raise ValueError(f"the loss over data is not finite ({loss.item()}); its {quantity} is undefined")


def gradient_products(
    outputs: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    grad_outputs: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """Vector-Jacobian products that tolerate disconnected pieces.

    Returns :math:`\\sum_j (\\partial \\text{outputs}_j / \\partial \\text{inputs}_i)^\\top
    \\text{grad\\_outputs}_j` for every ``i``; outputs that do not require a gradient contribute
    nothing and inputs that nothing depends on get zeros. The graph is retained.
    """
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o is not None and o.requires_grad]
    if not pairs:
        return [torch.zeros_like(x) for x in inputs]
    products = torch.autograd.grad(
        [o for o, _ in pairs],
        list(inputs),
        [g for _, g in pairs],
        retain_graph=True,
        allow_unused=True,
    )
    return [torch.zeros_like(x) if p is None else p for p, x in zip(products, inputs)]


class MatrixOperator:
    """A dense symmetric matrix behind the operator interface (``dim``, ``dtype``, ``device``, ``@``).

    Lets the estimators run on an explicit matrix: small problems, closed-form checks.
    """

    def __init__(self, matrix: torch.Tensor) -> None:
        if not isinstance(matrix, torch.Tensor) or matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            shape = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__
            raise ValueError(f"matrix must be a square 2-D tensor, got {shape}")
        if not matrix.is_floating_point():
            raise ValueError(f"matrix must be floating point, got {matrix.dtype}")
        self.matrix = matrix
        self.dim = matrix.shape[0]
        self.dtype = matrix.dtype
        self.device = matrix.device
        self.num_matvecs = 0

    def __matmul__(self, vectors: torch.Tensor) -> torch.Tensor:
        vectors = torch.as_tensor(vectors).to(device=self.device, dtype=self.dtype)
        if vectors.shape[:1] != (self.dim,) or vectors.ndim > 2:
            raise ValueError(
                f"v must have shape ({self.dim},) or ({self.dim}, k), got {tuple(vectors.shape)}"
            )
        self.num_matvecs += 1 if vectors.ndim == 1 else vectors.shape[1]
        return self.matrix @ vectors


def as_operator(operator: Any) -> Any:
    """``operator`` itself if it has ``dim``, ``dtype``, ``device`` and ``@``; a tensor is wrapped.

    Raises:
        TypeError: for anything else.
    """
    if isinstance(operator, torch.Tensor):
        return MatrixOperator(operator)
    if all(hasattr(operator, name) for name in ("dim", "dtype", "device", "__matmul__")):
        return operator
    raise TypeError(
        "H must be a curvature operator (e.g. HessianOperator) or a square tensor, "
        f"got {type(operator).__name__}"
    )

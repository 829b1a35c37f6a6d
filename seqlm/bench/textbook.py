"""The baselines, written plainly: the chapter's scratch model and torch's own modules.

:class:`TextbookModel` is the book's ``RNNModelScratch`` (d2l-zh 2.0 §8.5, with the GRU and
LSTM of §9.1/§9.2 in the same style): a list of parameter tensors, dense one-hot float inputs
(T, B, V), a Python loop over time steps that computes, for the RNN,

    H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h),   Y_t = H_t W_hq + b_q,

``torch.cat`` of the outputs (time-major, (T·B, V)), cross-entropy, backward through autograd,
the book's global-norm clip computed by hand and its hand-written SGD. :func:`textbook_predict`
is ``predict_ch8``: warm-up on the prefix one token at a time, then greedy argmax, read back
to the host after every token. Nothing in this module is fast on purpose; it is the reference
the harness divides by.

:class:`ConciseModel` is the book's ``RNNModel`` (§8.6): torch's ``nn.RNN/GRU/LSTM`` on one-hot
input plus ``nn.Linear``, trained by :func:`module_train_step` in a standard torch loop
(``zero_grad``, ``backward``, ``clip_grad_norm_``, ``optimizer.step``).

GRU note: the book (like Cho et al., 2014) applies the reset gate before the recurrent
product, ``tanh(X W_xh + (R ⊙ H) W_hh + b_h)``; torch (and seqlm) apply it after,
``tanh(X W_xn + b_in + R ⊙ (H W_hn + b_hn))``. The FLOPs are the same, the functions are not,
so only the RNN and LSTM baselines share weights with seqlm's models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

D2L_STD = 0.01  # the book's N(0, 0.01^2) weights
BLOCKS = {"rnn": ("h",), "gru": ("z", "r", "h"), "lstm": ("i", "f", "o", "c")}


def textbook_params(cell: str, vocab_size: int, hidden_size: int, *,
                    generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """The book's ``get_params``: ``W_x*`` (V, H), ``W_h*`` (H, H) ~ N(0, 0.01²), ``b_*`` = 0,
    then ``W_hq`` (H, V) and ``b_q`` (V); all with ``requires_grad``."""
    V, H = vocab_size, hidden_size

    def normal(*shape):
        return (torch.randn(*shape, generator=generator) * D2L_STD).to(device)

    params: dict[str, Tensor] = {}
    for gate in BLOCKS[cell]:
        params[f"W_x{gate}"] = normal(V, H)
        params[f"W_h{gate}"] = normal(H, H)
        params[f"b_{gate}"] = torch.zeros(H, device=device)
    params["W_hq"], params["b_q"] = normal(H, V), torch.zeros(V, device=device)
    for p in params.values():
        p.requires_grad_(True)
    return params


def _rnn(inputs: Tensor, state: tuple[Tensor], p: dict[str, Tensor]):
    H, = state
    outputs = []
    for X in inputs:
        H = torch.tanh(torch.mm(X, p["W_xh"]) + torch.mm(H, p["W_hh"]) + p["b_h"])
        Y = torch.mm(H, p["W_hq"]) + p["b_q"]
        outputs.append(Y)
    return torch.cat(outputs, dim=0), (H,)


def _gru(inputs: Tensor, state: tuple[Tensor], p: dict[str, Tensor]):
    H, = state
    outputs = []
    for X in inputs:
        Z = torch.sigmoid((X @ p["W_xz"]) + (H @ p["W_hz"]) + p["b_z"])
        R = torch.sigmoid((X @ p["W_xr"]) + (H @ p["W_hr"]) + p["b_r"])
        H_tilda = torch.tanh((X @ p["W_xh"]) + ((R * H) @ p["W_hh"]) + p["b_h"])
        H = Z * H + (1 - Z) * H_tilda
        Y = H @ p["W_hq"] + p["b_q"]
        outputs.append(Y)
    return torch.cat(outputs, dim=0), (H,)


def _lstm(inputs: Tensor, state: tuple[Tensor, Tensor], p: dict[str, Tensor]):
    H, C = state
    outputs = []
    for X in inputs:
        I = torch.sigmoid((X @ p["W_xi"]) + (H @ p["W_hi"]) + p["b_i"])  # noqa: E741 (book)
        Fg = torch.sigmoid((X @ p["W_xf"]) + (H @ p["W_hf"]) + p["b_f"])
        O = torch.sigmoid((X @ p["W_xo"]) + (H @ p["W_ho"]) + p["b_o"])  # noqa: E741 (book)
        C_tilda = torch.tanh((X @ p["W_xc"]) + (H @ p["W_hc"]) + p["b_c"])
        C = Fg * C + I * C_tilda
        H = O * torch.tanh(C)
        Y = (H @ p["W_hq"]) + p["b_q"]
        outputs.append(Y)
    return torch.cat(outputs, dim=0), (H, C)


_FORWARD = {"rnn": _rnn, "gru": _gru, "lstm": _lstm}


class TextbookModel:
    """The book's ``RNNModelScratch``: ``model(X, state) -> (Y (T·B, V), state)``.

    Args:
        cell: ``'rnn'``, ``'gru'`` or ``'lstm'``.
        vocab_size: V; inputs are one-hot V-vectors.
        hidden_size: H.
        generator: source of the initial weights.
        device: where the parameters live.
    """

    def __init__(self, cell: str, vocab_size: int, hidden_size: int, *,
                 generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.cell, self.vocab_size, self.hidden_size = cell, vocab_size, hidden_size
        self.device = torch.device(device)
        self.named_params = textbook_params(cell, vocab_size, hidden_size,
                                            generator=generator, device=device)
        self.params = list(self.named_params.values())
        self.forward_fn = _FORWARD[cell]

    def __call__(self, X: Tensor, state: tuple[Tensor, ...]):
        """X (B, T) int64 → logits (T·B, V), time-major as in the book."""
        X = F.one_hot(X.T, self.vocab_size).type(torch.float32)
        return self.forward_fn(X, state, self.named_params)

    def begin_state(self, batch_size: int) -> tuple[Tensor, ...]:
        zeros = torch.zeros((batch_size, self.hidden_size), device=self.device)
        return (zeros, zeros.clone()) if self.cell == "lstm" else (zeros,)


def grad_clipping(params: list[Tensor], theta: float) -> None:
    """The book's clip: g ← min(1, θ/‖g‖)·g with the global L2 norm of every gradient."""
    norm = torch.sqrt(sum(torch.sum(p.grad ** 2) for p in params))
    if norm > theta:
        for p in params:
            p.grad[:] *= theta / norm


def sgd(params: list[Tensor], lr: float, batch_size: int) -> None:
    """The book's minibatch SGD: ``p -= lr * grad / batch_size``, then zero the gradient."""
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad / batch_size
            p.grad.zero_()


def textbook_train_step(model: TextbookModel, X: Tensor, Y: Tensor, state, *,
                        lr: float = 1.0, theta: float = 1.0):
    """One step of the book's ``train_epoch_ch8`` with sequential partitioning.

    Args:
        model: the scratch model.
        X, Y: (B, T) int64 inputs and targets.
        state: the carried state (detached here, as the book does), or None for zeros.

    Returns:
        ``(loss, state)``: the mean cross-entropy (a 0-d tensor) and the new state.
    """
    if state is None:
        state = model.begin_state(X.shape[0])
    else:
        state = tuple(s.detach() for s in state)
    y = Y.T.reshape(-1)
    y_hat, state = model(X, state)
    loss = F.cross_entropy(y_hat, y.long()).mean()
    loss.backward()
    grad_clipping(model.params, theta)
    sgd(model.params, lr, batch_size=1)  # the loss is already a mean
    return loss.detach(), state


def textbook_predict(prefix_ids: list[int], num_preds: int, model) -> list[int]:
    """The book's ``predict_ch8`` on ids: warm up on the prefix, then ``num_preds`` greedy
    tokens, each read back to the host with ``int(...)``; returns every id, prefix included.

    ``model`` is a :class:`TextbookModel` or a :class:`ConciseModel` (both take (1, 1) ids).
    """
    state = model.begin_state(1)
    outputs = [prefix_ids[0]]
    device = model.device

    def get_input():
        return torch.tensor([outputs[-1]], device=device).reshape((1, 1))

    for y in prefix_ids[1:]:  # warm-up
        _, state = model(get_input(), state)
        outputs.append(y)
    for _ in range(num_preds):
        y, state = model(get_input(), state)
        outputs.append(int(y.argmax(dim=1).reshape(1)))
    return outputs


class ConciseModel(nn.Module):
    """The book's ``RNNModel``: torch's recurrent layer on one-hot input, then ``nn.Linear``.

    Args:
        cell: ``'rnn'``, ``'gru'`` or ``'lstm'`` (``nn.RNN``, ``nn.GRU``, ``nn.LSTM``).
        vocab_size: V.
        hidden_size: H.
    """

    def __init__(self, cell: str, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        layer = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.cell, self.vocab_size = cell, vocab_size
        self.rnn = layer(vocab_size, hidden_size)
        self.linear = nn.Linear(hidden_size, vocab_size)

    @property
    def device(self) -> torch.device:
        return self.linear.weight.device

    def forward(self, inputs: Tensor, state):
        """inputs (B, T) int64 → logits (T·B, V), time-major, and the new state."""
        X = F.one_hot(inputs.T.long(), self.vocab_size).to(torch.float32)
        Y, state = self.rnn(X, state)
        return self.linear(Y.reshape((-1, Y.shape[-1]))), state

    def begin_state(self, batch_size: int):
        zeros = torch.zeros((self.rnn.num_layers, batch_size, self.rnn.hidden_size),
                            device=self.device)
        return (zeros, zeros.clone()) if self.cell == "lstm" else zeros


def module_train_step(model: ConciseModel, optimizer: torch.optim.Optimizer, X: Tensor,
                      Y: Tensor, state, *, clip: float = 1.0):
    """One standard torch training step of :class:`ConciseModel` (state carried, detached)."""
    if state is None:
        state = model.begin_state(X.shape[0])
    elif isinstance(state, tuple):
        state = tuple(s.detach() for s in state)
    else:
        state = state.detach()
    y_hat, state = model(X, state)
    loss = F.cross_entropy(y_hat, Y.T.reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.detach(), state

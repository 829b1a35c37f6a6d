"""The peers benchmarks/quality.py measures seqlm against, written plainly, and the timed loop
they share (the budget is training time: evaluations are taken off the clock).

* ``transformer``: a decoder-only transformer with nanoGPT's published CPU settings (4 layers,
  4 heads, width 128, context 64, batch 12, AdamW lr 1e-3, betas 0.9/0.99, weight decay 0.1 on
  matrices, 100 warm-up steps, cosine to 1e-4 following the time budget, clip 1, no dropout,
  no biases, tied embeddings); evaluated on consecutive non-overlapping 64-token blocks.
* ``wlm``: pytorch/examples' word_language_model defaults (embedding 200, LSTM 2 x 200, dropout
  0.2 on the embeddings, between the layers and before the decoder, an untied decoder, weights
  U(-0.1, 0.1), plain SGD lr 20, clip 0.25, 20 rows x 35 steps cut sequentially with the state
  carried and detached, the lr divided by 4 whenever an evaluation does not improve on the
  best); evaluated on the whole split in 10 rows, state carried, token-weighted.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ---- the timed loop --------------------------------------------------------------------------

def timed_loop(step: Callable[[int, float], int], evaluate: Callable[[], tuple[float, int]],
               budget: float, eval_every: float,
               on_eval: Callable[[float], dict] = lambda loss: {},
               max_steps: int | None = None) -> dict:
    """Calls ``step(step_index, fraction_of_budget_spent) -> tokens`` until ``budget`` seconds
    of training are spent (or ``max_steps`` steps taken); ``evaluate() -> (summed NLL, count)``
    runs every ``eval_every`` seconds of training, off the clock, and once on the final weights.

    ``on_eval(loss)`` sees each evaluation before training resumes (not the final one) and
    returns extra fields for that curve point.

    Returns:
        ``steps``, ``tokens``, ``train_s``, ``eval_s``, ``final_eval_s`` and ``curve`` (one
        point per evaluation: elapsed, step, tokens, loss, count, final).
    """
    curve, eval_s, elapsed, n, tokens, next_eval = [], 0.0, 0.0, 0, 0, eval_every

    def point(final: bool) -> tuple[float, dict]:
        start = time.perf_counter()
        nll, count = evaluate()
        pt = {"elapsed": elapsed, "step": n, "tokens": tokens, "loss": nll / count,
              "count": count, "final": final}
        curve.append(pt)
        return time.perf_counter() - start, pt

    tick = time.perf_counter()
    while elapsed < budget and n != max_steps:
        tokens += step(n, elapsed / budget)
        n += 1
        now = time.perf_counter()
        elapsed, tick = elapsed + now - tick, now
        if elapsed >= next_eval and elapsed < budget:
            seconds, pt = point(False)
            pt.update(on_eval(pt["loss"]))
            eval_s += seconds
            next_eval += eval_every
            tick = time.perf_counter()  # evaluation is off the clock
    final_s, _ = point(True)
    return {"steps": n, "tokens": tokens, "train_s": elapsed, "eval_s": eval_s,
            "final_eval_s": final_s, "curve": curve}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- the transformer ---------------------------------------------------------------------------

@dataclass
class GPTConfig:
    """The peer's architecture and training settings (nanoGPT's CPU settings for Tiny Shakespeare)."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    batch_size: int = 12
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.99
    clip: float = 1.0
    dropout: float = 0.0
    seed: int = 0


class CausalBlock(nn.Module):
    """Pre-norm block: x + attn(ln(x)), then x + mlp(ln(x)); (B, T, C) -> (B, T, C)."""

    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = c.n_head, c.dropout
        self.ln1, self.ln2 = nn.LayerNorm(c.n_embd, bias=False), nn.LayerNorm(c.n_embd, bias=False)
        self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd, bias=False)
        self.proj = nn.Linear(c.n_embd, c.n_embd, bias=False)
        self.mlp = nn.Sequential(nn.Linear(c.n_embd, 4 * c.n_embd, bias=False), nn.GELU(),
                                 nn.Linear(4 * c.n_embd, c.n_embd, bias=False),
                                 nn.Dropout(c.dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_head, C // self.n_head).unbind(2)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2), is_causal=True,
                                             dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(att.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Token + learned position embeddings, ``n_layer`` blocks, final norm, tied decoder.

    ``forward(tokens (B, T)) -> logits (B, T, V)`` with ``T <= block_size``.
    """

    def __init__(self, c: GPTConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = c
        self.tok = nn.Embedding(vocab_size, c.n_embd)
        self.pos = nn.Embedding(c.block_size, c.n_embd)
        self.blocks = nn.Sequential(*[CausalBlock(c) for _ in range(c.n_layer)])
        self.ln = nn.LayerNorm(c.n_embd, bias=False)
        self.head = nn.Linear(c.n_embd, vocab_size, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:  # GPT-2 init; residual projections scaled by depth
                std = 0.02 / math.sqrt(2 * c.n_layer) if name.endswith(("proj.weight",
                                                                        "mlp.2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.head(self.ln(self.blocks(self.tok(tokens) + self.pos(positions))))


@torch.inference_mode()
def gpt_evaluate(model: TinyGPT, tokens: np.ndarray, batch_size: int = 64) -> tuple[float, int]:
    """Summed NLL and count over every target of ``tokens`` (all ``len - 1``), the stream cut
    into consecutive ``block_size`` blocks (the last one shorter), each read from no context."""
    was_training = model.training
    model.eval()
    data = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    T = model.config.block_size
    n_full = (len(data) - 1) // T
    total, count = 0.0, 0
    pieces = [(data[: n_full * T].view(n_full, T), data[1: n_full * T + 1].view(n_full, T))]
    if n_full * T < len(data) - 1:
        pieces.append((data[n_full * T: -1][None], data[n_full * T + 1:][None]))
    for X, Y in pieces:
        for i in range(0, len(X), batch_size):
            logits = model(X[i: i + batch_size])
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           Y[i: i + batch_size].reshape(-1), reduction="sum"))
            count += Y[i: i + batch_size].numel()
    model.train(was_training)
    return total, count


def gpt_optimizer(model: TinyGPT, c: GPTConfig) -> torch.optim.AdamW:
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": matrices, "weight_decay": c.weight_decay},
                              {"params": others, "weight_decay": 0.0}],
                             lr=c.lr, betas=(0.9, c.beta2))


def gpt_lr(c: GPTConfig, step: int, frac: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` to ``min_lr`` over the
    fraction ``frac`` of the time budget spent."""
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    return c.min_lr + (c.lr - c.min_lr) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def train_gpt(c: GPTConfig, corpus, budget: float, eval_every: float) -> tuple[dict, TinyGPT]:
    torch.manual_seed(c.seed)
    model = TinyGPT(c, corpus.vocab_size)
    opt = gpt_optimizer(model, c)
    data = torch.from_numpy(np.asarray(corpus.splits["train"], dtype=np.int64))
    gen = torch.Generator().manual_seed(c.seed + 1)
    offsets = torch.arange(c.block_size + 1)

    def step(n: int, frac: float) -> int:
        starts = torch.randint(len(data) - c.block_size - 1, (c.batch_size, 1), generator=gen)
        window = data[starts + offsets]
        for group in opt.param_groups:
            group["lr"] = gpt_lr(c, n, frac)
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.clip)
        opt.step()
        return window[:, 1:].numel()

    out = timed_loop(step, lambda: gpt_evaluate(model, corpus.splits["val"]), budget, eval_every)
    return {"kind": "transformer", "config": dataclasses.asdict(c), "params": _n_params(model),
            **out}, model


@torch.inference_mode()
def gpt_sample(model: TinyGPT, tokenizer, prefix: str, n: int, temperature: float,
               seed: int) -> str:
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.from_numpy(np.asarray(tokenizer.encode(prefix), dtype=np.int64))[None]
    for _ in range(n):
        logits = model(ids[:, -model.config.block_size:])[0, -1] / temperature
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
        ids = torch.cat([ids, nxt[None]], dim=1)
    return tokenizer.decode(ids[0].tolist())


# ---- word_language_model's LSTM ---------------------------------------------------------------

@dataclass
class WLMConfig:
    """word_language_model's defaults (main.py's flags) for its LSTM."""

    emsize: int = 200
    nhid: int = 200
    nlayers: int = 2
    dropout: float = 0.2
    init_range: float = 0.1
    lr: float = 20.0
    lr_decay: float = 4.0  # the lr is divided by this when an evaluation does not improve
    clip: float = 0.25
    batch_size: int = 20
    bptt: int = 35
    eval_batch_size: int = 10
    seed: int = 0


class WordLSTM(nn.Module):
    """Embedding -> dropout -> LSTM -> dropout -> linear decoder (untied).

    ``forward(tokens (B, T), state) -> (logits (B, T, V), (h, c))``, state ``(L, B, H)`` each.
    """

    def __init__(self, c: WLMConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = c
        self.drop = nn.Dropout(c.dropout)
        self.encoder = nn.Embedding(vocab_size, c.emsize)
        self.rnn = nn.LSTM(c.emsize, c.nhid, c.nlayers, dropout=c.dropout, batch_first=True)
        self.decoder = nn.Linear(c.nhid, vocab_size)
        nn.init.uniform_(self.encoder.weight, -c.init_range, c.init_range)
        nn.init.uniform_(self.decoder.weight, -c.init_range, c.init_range)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens: torch.Tensor, state=None):
        output, state = self.rnn(self.drop(self.encoder(tokens)), state)
        return self.decoder(self.drop(output)), state


def batchify(tokens: np.ndarray, rows: int) -> torch.Tensor:
    """The stream cut into ``rows`` contiguous rows, the tail that does not fill a row dropped:
    ``(rows, len // rows)``; row ``r`` continues where row ``r - 1`` ends::

        a b c d e f g h i j k l   rows=3  ->  a b c d
                                              e f g h
                                              i j k l
    """
    data = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    n = len(data) // rows
    return data[: n * rows].view(rows, n)


def bptt_windows(data: torch.Tensor, bptt: int):
    """``(X, Y)`` windows of ``data (B, N)`` in order, ``X (B, <= bptt)``, Y shifted by one."""
    for i in range(0, data.shape[1] - 1, bptt):
        seq = min(bptt, data.shape[1] - 1 - i)
        yield data[:, i: i + seq], data[:, i + 1: i + 1 + seq]


def _detach(state):
    return tuple(s.detach() for s in state)


@torch.inference_mode()
def wlm_evaluate(model: WordLSTM, tokens: np.ndarray) -> tuple[float, int]:
    """Summed NLL and count over ``tokens`` in ``eval_batch_size`` rows, state carried along
    each row (every target of a row once)."""
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    for X, Y in bptt_windows(batchify(tokens, model.config.eval_batch_size), model.config.bptt):
        logits, state = model(X, state)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1),
                                       reduction="sum"))
        count += Y.numel()
    model.train(was_training)
    return total, count


class Quartering:
    """The lr policy: divide by ``lr_decay`` whenever an evaluation is no better than the best."""

    def __init__(self, opt: torch.optim.Optimizer, decay: float) -> None:
        self.opt, self.decay, self.best = opt, decay, math.inf

    def __call__(self, loss: float) -> dict:
        if loss < self.best:
            self.best = loss
        else:
            for group in self.opt.param_groups:
                group["lr"] /= self.decay
        return {"lr": self.opt.param_groups[0]["lr"]}  # the lr training resumes with


def train_wlm(c: WLMConfig, corpus, budget: float, eval_every: float,
              max_steps: int | None = None) -> tuple[dict, WordLSTM]:
    """word_language_model's training loop on a time budget: epochs of sequential windows, the
    state detached between windows and fresh at each epoch's start."""
    torch.manual_seed(c.seed)
    model = WordLSTM(c, corpus.vocab_size)
    opt = torch.optim.SGD(model.parameters(), lr=c.lr)
    data = batchify(corpus.splits["train"], c.batch_size)
    stream = {"windows": iter(()), "state": None}

    def step(n: int, frac: float) -> int:
        batch = next(stream["windows"], None)
        if batch is None:  # a new epoch
            stream["windows"], stream["state"] = bptt_windows(data, c.bptt), None
            batch = next(stream["windows"])
        X, Y = batch
        logits, state = model(X, stream["state"])
        stream["state"] = _detach(state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.clip)
        opt.step()
        return Y.numel()

    out = timed_loop(step, lambda: wlm_evaluate(model, corpus.splits["val"]), budget,
                     eval_every, on_eval=Quartering(opt, c.lr_decay), max_steps=max_steps)
    return {"kind": "wlm", "config": dataclasses.asdict(c), "params": _n_params(model),
            **out}, model


@torch.inference_mode()
def wlm_sample(model: WordLSTM, tokenizer, prefix: str, n: int, temperature: float,
               seed: int) -> str:
    """Warms the state up on ``prefix`` and draws ``n`` tokens after it."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    ids = list(tokenizer.encode(prefix))
    logits, state = model(torch.as_tensor(ids, dtype=torch.int64)[None])
    for _ in range(n):
        probs = torch.softmax(logits[0, -1] / temperature, -1)
        ids.append(int(torch.multinomial(probs, 1, generator=gen)))
        logits, state = model(torch.as_tensor([[ids[-1]]]), state)
    return tokenizer.decode(ids)

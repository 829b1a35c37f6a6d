"""RNNLM: config validation, shapes, one-hot paths, tying, state helpers, devices."""

from dataclasses import fields

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from seqlm.errors import ConfigError
from seqlm.config import ModelConfig
from seqlm.devices import resolve_device
from seqlm.models import RNNLM, detach_state

V, B, T = 13, 3, 7


def _model(**kwargs):
    kwargs = {"vocab_size": V, "hidden_size": 8, **kwargs}
    return RNNLM(ModelConfig(**kwargs)).double()


def _tokens(seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_every_config_field_has_help_and_choices_where_they_apply():
    for f in fields(ModelConfig):
        assert f.metadata.get("help"), f.name
    choices = {f.name: f.metadata.get("choices") for f in fields(ModelConfig)}
    assert choices["cell"] == ("rnn", "gru", "lstm", "mingru", "minlstm")
    assert choices["impl"] == ("scratch", "fused", "auto")
    assert choices["bptt_engine"] == ("autograd", "manual", "auto")
    assert choices["init"] == ("torch", "d2l")


@pytest.mark.parametrize("cell,truncation,device,want", [
    ("rnn", "window", "cpu", ("scratch", "manual")),
    ("gru", "full", "cpu", ("scratch", "manual")),
    ("lstm", "window", "cpu", ("fused", "autograd")),
    ("gru", "window", "cuda", ("fused", "autograd")),
    ("rnn", "tau:4", "cuda", ("scratch", "manual")),  # fused cores cannot truncate so
    ("gru", "tau:4", "cpu", ("scratch", "autograd")),  # the GRU engine runs window/full only
    ("lstm", "random:0.5", "cpu", ("scratch", "autograd")),
])
def test_auto_resolves_to_the_measured_fastest_core(cell, truncation, device, want):
    config = ModelConfig(vocab_size=5, cell=cell, truncation=truncation, impl="auto",
                         bptt_engine="auto")
    resolved = config.resolve(device)
    assert (resolved.impl, resolved.bptt_engine) == want
    assert resolved.resolve(device) == resolved  # concrete choices stay
    # the model's copy has its output layer decided too (5 ids: the full decoder)
    assert RNNLM(config).config == replace(config.resolve("cpu"), output="full")


def test_auto_keeps_an_explicit_choice_and_checks_it():
    assert ModelConfig(vocab_size=5, cell="gru", impl="fused",
                       bptt_engine="auto").resolve().bptt_engine == "autograd"
    assert ModelConfig(vocab_size=5, cell="gru", impl="auto",
                       bptt_engine="autograd").resolve().impl == "scratch"
    with pytest.raises(ConfigError, match="`bptt_engine` 'manual' needs"):
        ModelConfig(vocab_size=5, cell="lstm", impl="auto", bptt_engine="manual")
    model = RNNLM(ModelConfig(vocab_size=5, cell="gru", impl="auto", bptt_engine="auto"))
    assert (model.config.impl, model.config.bptt_engine) == ("scratch", "manual")


@pytest.mark.parametrize("kwargs,field", [
    ({"vocab_size": 0}, "vocab_size"),
    ({"hidden_size": -1}, "hidden_size"),
    ({"num_layers": 1.5}, "num_layers"),
    ({"embedding_dim": 0}, "embedding_dim"),
    ({"cell": "transformer"}, "cell"),
    ({"impl": "cudnn"}, "impl"),
    ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"),
    ({"nonlinearity": "gelu"}, "nonlinearity"),
    ({"init": "xavier"}, "init"),
    ({"bptt_engine": "jax"}, "bptt_engine"),
    ({"tie_weights": True}, "tie_weights"),
    ({"tie_weights": True, "embedding_dim": 4}, "embedding_dim"),
    ({"cell": "lstm", "nonlinearity": "relu"}, "nonlinearity"),
    ({"cell": "lstm", "bptt_engine": "manual"}, "bptt_engine"),
    ({"impl": "fused", "bptt_engine": "manual"}, "bptt_engine"),
    ({"cell": "gru", "bptt_engine": "manual", "truncation": "tau:3"}, "bptt_engine"),
    ({"cell": "gru", "bptt_engine": "manual", "truncation": "random:0.5"}, "bptt_engine"),
])
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**{"vocab_size": V, **kwargs})


def test_config_validates_truncation_text():
    with pytest.raises(ConfigError, match="truncation"):
        ModelConfig(vocab_size=V, truncation="sometimes")
    with pytest.raises(ConfigError, match="scratch"):
        ModelConfig(vocab_size=V, impl="fused", truncation="tau:4")
    assert ModelConfig(vocab_size=V, truncation="tau:4").truncation == "tau:4"


@pytest.mark.parametrize("impl", ["scratch", "fused"])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("embedding_dim", [None, 5])
def test_shapes_and_state_layout(cell, impl, embedding_dim):
    model = _model(cell=cell, impl=impl, num_layers=2, embedding_dim=embedding_dim)
    logits, state = model(_tokens())
    assert logits.shape == (B, T, V)
    parts = state if cell == "lstm" else (state,)
    assert len(parts) == (2 if cell == "lstm" else 1)
    assert all(p.shape == (2, B, 8) for p in parts)
    zero = model.begin_state(B)
    assert all(torch.all(z == 0) and z.shape == (2, B, 8)
               for z in (zero if cell == "lstm" else (zero,)))
    torch.testing.assert_close(model(_tokens(), zero)[0], logits)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_carried_state_equals_one_long_forward(cell):
    model = _model(cell=cell, num_layers=2)
    tokens = _tokens()
    whole, _ = model(tokens)
    first, state = model(tokens[:, :3])
    second, _ = model(tokens[:, 3:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_literal_one_hot_equals_lookup(cell):
    model = _model(cell=cell, num_layers=2)
    tokens = _tokens()
    grads = []
    for literal in (False, True):
        model.zero_grad()
        model.literal_one_hot = literal
        logits, _ = model(tokens)
        (logits ** 2).sum().backward()
        grads.append((logits.detach(), model.core.weight_ih_l0.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-12, rtol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-12, rtol=0)
    assert model.embed(tokens).shape == (B, T, V)  # literal path hands the core one-hot rows


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("embedding_dim", [None, 8])
def test_scratch_and_fused_models_are_twins(cell, embedding_dim):
    scratch = _model(cell=cell, num_layers=2, embedding_dim=embedding_dim)
    fused = _model(cell=cell, num_layers=2, embedding_dim=embedding_dim, impl="fused")
    fused.load_state_dict(scratch.state_dict())
    torch.testing.assert_close(fused(_tokens())[0], scratch(_tokens())[0])


def test_tied_weights_share_one_tensor_and_collect_both_gradients():
    model = _model(embedding_dim=8, tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    assert sum(p.numel() for p in model.parameters()) == (
        V * 8 + V + sum(p.numel() for p in model.core.parameters()))
    logits, _ = model(_tokens())
    logits.sum().backward()
    untied = _model(embedding_dim=8)
    untied.load_state_dict(model.state_dict())
    logits_u, _ = untied(_tokens())
    logits_u.sum().backward()
    torch.testing.assert_close(model.embedding.weight.grad,
                               untied.embedding.weight.grad + untied.decoder.weight.grad)


def test_d2l_init_covers_decoder_and_embedding():
    model = RNNLM(ModelConfig(vocab_size=500, hidden_size=100, embedding_dim=50, init="d2l"))
    for weight in (model.decoder.weight, model.embedding.weight, model.core.weight_hh_l0):
        assert abs(weight.std().item() - 0.01) < 0.001
    assert torch.all(model.decoder.bias == 0) and torch.all(model.core.bias_ih_l0 == 0)


def test_next_logits_equals_last_column_and_zero_state_gives_bias():
    for cell in ("rnn", "lstm"):
        model = _model(cell=cell, num_layers=2).eval()
        logits, state = model(_tokens())
        torch.testing.assert_close(model.next_logits(state), logits[:, -1])
        zero = model.next_logits(model.begin_state(2))
        torch.testing.assert_close(zero, model.decoder.bias.expand(2, V))


def test_forward_rejects_float_tokens():
    with pytest.raises(ValueError, match="integer tokens"):
        _model()(torch.zeros(B, T))


@pytest.mark.parametrize("impl", ["scratch", "fused"])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_bfloat16_autocast_forward_and_backward(cell, impl):
    model = RNNLM(ModelConfig(vocab_size=V, hidden_size=8, cell=cell, impl=impl, num_layers=2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(_tokens())
        logits, _ = model(_tokens(1), detach_state(state))
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_detach_state_returns_new_tensors_and_keeps_the_original_graph():
    h = torch.ones(1, 2, 3, requires_grad=True) * 2
    c = torch.ones(1, 2, 3, requires_grad=True) * 3
    single = detach_state(h)
    assert not single.requires_grad and single is not h and h.grad_fn is not None
    pair = detach_state((h, c))
    assert isinstance(pair, tuple) and len(pair) == 2
    assert not any(p.requires_grad for p in pair) and c.grad_fn is not None
    torch.testing.assert_close(pair[1], c.detach())
    assert detach_state(None) is None


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cuda: CUDA is not available.*cpu or auto"):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match="cuda:1"):
            resolve_device("cuda:1")
        assert resolve_device("auto") != torch.device("cuda")
    else:
        with pytest.raises(ConfigError, match="cuda:99"):
            resolve_device("cuda:99")


# ------------------------------------------------ the GRU's hand-written BPTT inside the model


def lm_pair(**fields):
    config = dict(vocab_size=11, cell="gru", hidden_size=8, num_layers=2, **fields)
    auto = RNNLM(ModelConfig(**config)).double()
    manual = RNNLM(ModelConfig(bptt_engine="manual", **config)).double()
    manual.load_state_dict(auto.state_dict())
    return auto, manual


def loss_and_grads(model, tokens, state, seed=0):
    torch.manual_seed(seed)  # the same dropout masks in both models
    logits, _ = model(tokens[:, :-1], state)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    return loss, torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("fields", [{}, {"embedding_dim": 5}, {"dropout": 0.3}])
def test_rnnlm_trains_the_same_with_either_engine(fields):
    auto, manual = lm_pair(**fields)
    tokens = torch.randint(0, 11, (3, 9), generator=torch.Generator().manual_seed(1))
    state = torch.randn(2, 3, 8, dtype=torch.float64)
    loss_a, grads_a = loss_and_grads(auto, tokens, state)
    loss_m, grads_m = loss_and_grads(manual, tokens, state)
    torch.testing.assert_close(loss_m, loss_a, rtol=1e-10, atol=1e-10)
    for (name, _), a, m in zip(auto.named_parameters(), grads_a, grads_m):
        assert a.abs().sum() > 0, name
        torch.testing.assert_close(m, a, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("embedding_dim", [None, 4])
def test_rnnlm_under_bfloat16_autocast(embedding_dim):
    model = RNNLM(ModelConfig(vocab_size=11, cell="gru", hidden_size=8, num_layers=2,
                              embedding_dim=embedding_dim, bptt_engine="manual"))
    tokens = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(tokens)
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).mean().backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in model.parameters())

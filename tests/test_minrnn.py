"""minGRU/minLSTM (seqlm.models.minrnn): the parallel scan equals the sequential recurrence, the
stacked core equals its one-token stepper, and a model of them trains, saves and generates."""

import pytest
import torch

from seqlm.checkpoint import load_checkpoint, save_checkpoint
from seqlm.config import DataConfig, ModelConfig, TrainConfig
from seqlm.data import build_corpus
from seqlm.errors import ConfigError, ExportError
from seqlm.generate import generate
from seqlm.models import RNNLM, make_core
from seqlm.models.minrnn import SHIFT_RANGE, MinCell, MinRNN, parallel_scan
from seqlm.tokenize import CharTokenizer
from seqlm.trainer import Hooks, Trainer

from conftest import TINY_TEXT

CELLS = ["mingru", "minlstm"]


def _sequential(cell: MinCell, x, h):
    """The reference: the cell's plain-space step, one token at a time."""
    outputs = []
    for x_t in x:
        h = cell.step(x_t, h)
        outputs.append(h)
    return torch.stack(outputs)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T", [1, 2, 7, 40])
def test_parallel_scan_equals_the_sequential_recurrence(cell, T):
    torch.manual_seed(T)
    layer = MinCell(cell, 6).double()
    x = 3 * torch.randn(T, 4, 6, dtype=torch.float64)  # wide gates: both g branches, z near 0/1
    h0 = torch.randn(4, 6, dtype=torch.float64)  # any sign, not just states the cell makes
    torch.testing.assert_close(layer(x, h0), _sequential(layer, x, h0), rtol=0, atol=1e-10)


def _linear_recurrence(log_a, log_b, h):
    """h_t = a_t h_{t-1} + b_t in plain space, step by step."""
    outputs = []
    for a, b in zip(log_a.exp(), log_b.exp()):
        h = a * h + b
        outputs.append(h)
    return torch.stack(outputs)


def test_the_scan_and_its_gradients_are_exact_in_narrow_wide_and_mixed_columns():
    torch.manual_seed(0)
    T = 10
    log_a = -torch.rand(T, 2, 3, dtype=torch.float64) * 4 * SHIFT_RANGE / T
    log_a[:, 0] /= 40  # row 0 spans less than the range, row 1 more: both ways in one call
    log_b = torch.randn(T, 2, 3, dtype=torch.float64)
    h0 = torch.randn(2, 3, dtype=torch.float64)
    span = (log_b - log_a.cumsum(0)).amax(0) - (log_b - log_a.cumsum(0)).amin(0)
    assert (span[0] < SHIFT_RANGE).all() and (span[1] >= SHIFT_RANGE).all()
    for a in (log_a, log_a[:, :1], log_a[:, 1:]):  # mixed, all narrow, all wide
        b, h = log_b[:, :a.shape[1]], h0[:a.shape[1]]
        torch.testing.assert_close(parallel_scan(a, b, h), _linear_recurrence(a, b, h),
                                   rtol=1e-10, atol=1e-12)
    inputs = tuple(t.clone().requires_grad_() for t in (log_a, log_b, h0))
    assert torch.autograd.gradcheck(parallel_scan, inputs)


@pytest.mark.parametrize("cell", CELLS)
def test_scan_gradients_pass_gradcheck_and_match_the_sequential_version(cell):
    torch.manual_seed(1)
    layer = MinCell(cell, 3).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x, h0))
    weights = torch.randn(5, 2, 3, dtype=torch.float64)
    grads = [torch.autograd.grad((run(x, h0) * weights).sum(), (x, h0, *layer.parameters()))
             for run in (layer, lambda x, h: _sequential(layer, x, h))]
    for got, want in zip(*grads):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("embedding_dim,num_layers", [(None, 1), (5, 3)])
def test_model_forward_equals_the_stepper_one_token_at_a_time(cell, embedding_dim, num_layers):
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=11, cell=cell, impl="auto", hidden_size=8,
                              num_layers=num_layers, embedding_dim=embedding_dim,
                              dropout=0.3)).eval()
    tokens = torch.randint(0, 11, (3, 6))
    start = torch.rand(num_layers, 3, 8)  # a carried state, as sequential partitioning passes
    want, want_state = model(tokens, start)
    step, state = model.stepper(batch_size=1), start
    for t in range(tokens.shape[1]):
        logits, state = step(tokens[:, t], state)
        torch.testing.assert_close(logits, want[:, t], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, want_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.next_logits(want_state), want[:, -1])


def test_an_adaptive_output_layer_steps_as_forward_scores():
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=12, cell="mingru", hidden_size=8, num_layers=2,
                              output="adaptive")).eval()
    tokens = torch.randint(0, 12, (2, 5))
    want, _ = model(tokens)
    step, state = model.stepper(batch_size=2), model.begin_state(2)
    for t in range(tokens.shape[1]):
        logits, state = step(tokens[:, t], state)
        torch.testing.assert_close(logits, want[:, t], rtol=1e-5, atol=1e-5)


def test_dropout_acts_between_blocks_in_training_only():
    torch.manual_seed(0)
    core = MinRNN("mingru", 4, 8, 2, dropout=0.5)
    x = torch.randn(2, 5, 4)
    train_a, train_b = core(x)[0], core(x)[0]
    core.eval()
    assert not torch.equal(train_a, train_b)
    assert torch.equal(core(x)[0], core(x)[0])


def test_bfloat16_autocast_keeps_the_scan_in_float32_and_close_to_it():
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=11, cell="minlstm", hidden_size=16, num_layers=2,
                              embedding_dim=8)).eval()
    tokens = torch.randint(0, 11, (2, 12))
    with torch.no_grad():
        want, want_state = model(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, state = model(tokens)
    assert state.dtype == torch.float32
    torch.testing.assert_close(state, want_state, rtol=0.05, atol=0.05)
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.1)


@pytest.mark.parametrize("settings,match", [
    ({"impl": "fused"}, "`impl` .fused. does not apply"),
    ({"truncation": "tau:3"}, "truncation"),
    ({"init": "d2l"}, "init"),
    ({"bptt_engine": "manual", "impl": "fused"}, "impl"),
    ({"nonlinearity": "relu"}, "nonlinearity"),
])
def test_settings_that_do_not_apply_are_one_line_config_errors(settings, match):
    with pytest.raises(ConfigError, match=match) as info:
        ModelConfig(vocab_size=5, cell="minlstm", **settings)
    assert "\n" not in str(info.value)


def test_auto_choices_resolve_to_the_sequential_scan_on_the_cpu_only():
    for device, engine in (("cpu", "manual"), ("cuda", "autograd")):
        c = ModelConfig(vocab_size=5, cell="mingru", impl="auto",
                        bptt_engine="auto").resolve(device)
        assert (c.impl, c.bptt_engine) == ("scratch", engine)
    core = make_core("minlstm", "scratch", 5, 4, 2, bptt_engine="manual")
    assert isinstance(core, MinRNN) and core.bptt_engine == "manual"


@pytest.mark.parametrize("cell", CELLS)
def test_the_manual_engine_equals_the_parallel_scan_and_passes_gradcheck(cell):
    torch.manual_seed(2)
    layer = MinCell(cell, 3).double()
    x = 2 * torch.randn(6, 2, 3, dtype=torch.float64)
    h0 = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(x, h0, sequential=True), layer(x, h0), rtol=0,
                               atol=1e-10)
    inputs = (x.requires_grad_(), h0.requires_grad_())
    assert torch.autograd.gradcheck(lambda x, h: layer(x, h, sequential=True), inputs)
    weights = torch.randn(6, 2, 3, dtype=torch.float64)
    grads = [torch.autograd.grad((layer(x, h0, sequential=s) * weights).sum(),
                                 (x, h0, *layer.parameters())) for s in (True, False)]
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_both_engines_train_the_same_model_alike():
    torch.manual_seed(0)
    fast = MinRNN("minlstm", 5, 8, 2, bptt_engine="manual")
    scan = MinRNN("minlstm", 5, 8, 2)
    scan.load_state_dict(fast.state_dict())
    x, h0 = torch.randn(3, 7, 5), torch.rand(2, 3, 8)
    out = [core(x, h0) for core in (fast, scan)]
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-5)
    grads = [torch.autograd.grad(o[0].square().sum(), tuple(c.parameters()))
             for o, c in zip(out, (fast, scan))]
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_numpy_stepper_refuses_and_auto_picks_torch():
    model = RNNLM(ModelConfig(vocab_size=5, cell="mingru", hidden_size=4))
    with pytest.raises(ConfigError, match="backend"):
        model.stepper(backend="numpy")
    logits, state = model.stepper(batch_size=1)(torch.tensor([2]), model.begin_state(1))
    assert logits.shape == (1, 5) and state.shape == (1, 1, 4)


def test_a_mingru_model_learns_a_tiny_text_with_carried_state():
    torch.manual_seed(0)
    corpus = build_corpus(TINY_TEXT, tokenizer="char")
    model = RNNLM(ModelConfig(vocab_size=corpus.vocab_size, cell="mingru", hidden_size=32,
                              num_layers=2, embedding_dim=16))
    trainer = Trainer(model, corpus, DataConfig(batch_size=4, num_steps=16),
                      TrainConfig(lr=1e-2, max_steps=60, eval_every=0, sample_tokens=0,
                                  guard_retries=0), torch.device("cpu"))
    before = trainer.validate()["loss"]
    trainer.run(Hooks())
    after = trainer.validate()["loss"]
    assert after < before - 0.5, (before, after)
    assert trainer.state.shape == (2, 4, 32) and not trainer.state.requires_grad


@pytest.mark.parametrize("cell", CELLS)
def test_checkpoint_round_trip_and_generation(tmp_path, cell):
    tokenizer = CharTokenizer.fit(TINY_TEXT)
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=len(tokenizer.vocab), cell=cell, hidden_size=12,
                              num_layers=2, embedding_dim=6)).eval()
    loaded = load_checkpoint(save_checkpoint(tmp_path / "ck", model, tokenizer)).model
    tokens = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(tokens)[0], model(tokens)[0])
    assert loaded.config == model.config
    texts = generate(loaded, tokenizer, "the ", max_new_tokens=15, temperature=0)
    assert texts == generate(model, tokenizer, "the ", max_new_tokens=15, temperature=0)
    assert texts[0].startswith("the ") and len(texts[0]) == len("the ") + 15


def test_onnx_export_refuses_the_min_cells(tmp_path):
    pytest.importorskip("onnx")
    from seqlm.export import export_onnx

    tokenizer = CharTokenizer.fit(TINY_TEXT)
    model = RNNLM(ModelConfig(vocab_size=len(tokenizer.vocab), cell="mingru", hidden_size=4))
    save_checkpoint(tmp_path / "ck", model, tokenizer)
    with pytest.raises(ExportError, match="'rnn', 'gru' and 'lstm'"):
        export_onnx(tmp_path / "ck", tmp_path / "out")
    assert not (tmp_path / "out").exists()

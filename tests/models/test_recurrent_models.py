"""fusednn.models' recurrent models: the fused kernels against the reference backend and
against the same model on torch.nn layers (loss and every parameter's gradient), training
on the synthetic tasks, LSTMLanguageModel.generate, packing in GRUClassifier, causality
in ConvLSTMPredictor, the tasks' data, and argument errors."""

import dataclasses

import pytest
import torch

import fusednn
from fusednn import testing
from fusednn.models import (
    ConvLSTMPredictor,
    ConvLSTMPredictorConfig,
    GRUClassifier,
    GRUClassifierConfig,
    LSTMLanguageModel,
    LSTMLanguageModelConfig,
    tasks,
)

# Tiny models, so that each test takes about a second at most on a CPU.
# hidden_size != embedding_size, so the projection before the tied output layer is in the graph.
LM = LSTMLanguageModelConfig(vocab_size=11, embedding_size=6, hidden_size=8, num_layers=2)
GRU = GRUClassifierConfig(vocab_size=5, num_classes=3, embedding_size=4, hidden_size=6, num_layers=2)
CONV = ConvLSTMPredictorConfig(channels=2, hidden_channels=3, kernel_size=3, num_layers=2)


def _lm_batch(B=3, T=7):
    tokens = torch.randint(0, LM.vocab_size, (B, T))
    return (tokens, torch.randint(0, LM.vocab_size, (B, T)))


def _gru_batch():
    lengths = torch.tensor([5, 9, 1, 6])  # unsorted, one of length 1, the longest not first
    tokens = torch.randint(0, GRU.vocab_size, (4, 9))
    return (tokens, lengths, torch.randint(0, GRU.num_classes, (4,)))


def _conv_batch():
    return (torch.randn(2, 4, CONV.channels, 5, 6, dtype=torch.float64),)


MODELS = {
    "lstm-lm": (LSTMLanguageModel, LM, _lm_batch),
    "gru-classifier": (GRUClassifier, GRU, _gru_batch),
    "conv-lstm-predictor": (ConvLSTMPredictor, CONV, _conv_batch),
}

def _build(name, device, dtype, **changes):
    """The named model with random weights away from the initialisation (biases non-zero)."""
    cls, config, _ = MODELS[name]
    model = cls(dataclasses.replace(config, **changes), device=device, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
    return model


def _batch(name, device, dtype):
    batch = MODELS[name][2]()
    return tuple(t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype) for t in batch)


def _loss_and_gradients(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model.loss(*batch)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def _assert_same(ours, truth):
    (loss, grads), (loss_truth, grads_truth) = ours, truth
    testing.assert_close(loss, loss_truth, name="loss")
    assert grads.keys() == grads_truth.keys()
    for name in grads:
        assert grads[name] is not None, name
        testing.assert_close(grads[name], grads_truth[name], name=f"grad of {name}")


# --------------------------------------------------------------------------- fused against the references
#
# float64 on every device (the fused kernels serve it on the CPU and CUDA): the suite's
# relative bound of 1e-10 holds for the loss and every parameter's gradient.


@pytest.mark.parametrize("device", testing.devices())
@pytest.mark.parametrize("name", MODELS)
def test_fused_kernels_match_the_reference_backend(name, device):
    model = _build(name, device, torch.float64)
    batch = _batch(name, device, torch.float64)
    with testing.recording_fusednn_calls() as calls:
        ours = _loss_and_gradients(model, batch)
    assert calls, "the default backend ran no fused kernel: the comparison would be empty"
    with fusednn.use_backend("reference"), testing.recording_fusednn_calls() as calls:
        truth = _loss_and_gradients(model, batch)
    assert not calls
    _assert_same(ours, truth)


@pytest.mark.parametrize("device", testing.devices())
@pytest.mark.parametrize("name", MODELS)
def test_fusednn_layers_match_torch_layers(name, device):
    """The same weights in the model built from torch's layers (ConvLSTM: the reference
    backend) give the same loss and gradients."""
    ours = _build(name, device, torch.float64)
    theirs = MODELS[name][0](dataclasses.replace(ours.config, layers="torch"), device=device, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    batch = _batch(name, device, torch.float64)
    with testing.recording_fusednn_calls() as calls:
        truth = _loss_and_gradients(theirs, batch)
    assert not calls, "the torch-layer model ran fused kernels"
    _assert_same(_loss_and_gradients(ours, batch), truth)


def test_layers_are_the_asked_modules():
    assert type(LSTMLanguageModel(LM).lstm) is fusednn.nn.LSTM
    assert type(LSTMLanguageModel(dataclasses.replace(LM, layers="torch")).lstm) is torch.nn.LSTM
    assert type(GRUClassifier(GRU).gru) is fusednn.nn.GRU
    assert type(GRUClassifier(dataclasses.replace(GRU, layers="torch")).gru) is torch.nn.GRU
    assert type(ConvLSTMPredictor(CONV).encoder) is fusednn.nn.ConvLSTM


# --------------------------------------------------------------------------- training


def _tiny_task(name):
    """The CLI's task for the model, with a tiny model, short sequences and small batches."""
    if name == "lstm-lm":
        return dataclasses.replace(
            tasks.TASKS[name], learning_rate=2e-2, batch_size=32,
            build=lambda layers, device: LSTMLanguageModel(
                LSTMLanguageModelConfig(vocab_size=8, embedding_size=12, hidden_size=16, num_layers=1, layers=layers)),
            batch=lambda B, generator, device: tasks.repeating_sequences(B, 24, 8, 2, 3, generator=generator))
    if name == "gru-classifier":
        return dataclasses.replace(
            tasks.TASKS[name], learning_rate=2e-2, batch_size=16,
            build=lambda layers, device: GRUClassifier(GRUClassifierConfig(hidden_size=12, layers=layers)),
            batch=lambda B, generator, device: tasks.bit_sequences(B, 3, 11, generator=generator))
    return dataclasses.replace(
        tasks.TASKS[name], learning_rate=3e-2, batch_size=8,
        build=lambda layers, device: ConvLSTMPredictor(ConvLSTMPredictorConfig(hidden_channels=8, layers=layers)),
        batch=lambda B, generator, device: (tasks.moving_squares(B, 6, 8, 3, generator=generator),))


# The held-out loss after 40 steps must be below this fraction of the loss before (seeded:
# the same numbers on every run; they reach 0.31, 0.06 and 0.32 of it). The language model
# starts at chance, ln 8 = 2.08, and cannot predict the first period of each row (2.5 of
# its 24 tokens); the classifier starts at chance, ln 2 = 0.69; the video predictor starts
# near the loss of predicting the mean image, and cannot know the motion before the
# second frame.
TRAINING_BOUNDS = {"lstm-lm": 0.55, "gru-classifier": 0.3, "conv-lstm-predictor": 0.6}


@pytest.mark.parametrize("name", MODELS)
def test_training_lowers_the_loss(name):
    task = _tiny_task(name)
    torch.manual_seed(0)
    model = task.build("fusednn", torch.device("cpu"))
    result = tasks.train(model, task, steps=40, batch_size=task.batch_size, seed=0, device=torch.device("cpu"))
    assert result.steps == 40 and result.timed_steps == 39 and result.units > 0 and result.seconds > 0
    assert result.loss_after < TRAINING_BOUNDS[name] * result.loss_before, result


def test_training_is_deterministic():
    task = _tiny_task("gru-classifier")
    results = []
    for _ in range(2):
        torch.manual_seed(1)
        model = task.build("fusednn", torch.device("cpu"))
        results.append(tasks.train(model, task, steps=3, batch_size=4, seed=5, device=torch.device("cpu")))
    assert results[0].loss_before == results[1].loss_before
    assert results[0].loss_after == results[1].loss_after


# --------------------------------------------------------------------------- LSTMLanguageModel


def test_lm_output_layer_is_tied_to_the_embedding():
    model = LSTMLanguageModel(LM)
    names = {n for n, _ in model.named_parameters()}
    assert names == {"embedding.weight", "projection.weight", "output_bias"} | {
        f"lstm.{kind}_l{layer}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") for layer in (0, 1)}
    assert model.projection.weight.shape == (LM.embedding_size, LM.hidden_size)
    same_size = LSTMLanguageModel(dataclasses.replace(LM, hidden_size=LM.embedding_size))
    assert same_size.projection is None and "projection.weight" not in dict(same_size.named_parameters())
    # The logits move with the embedding's weight even where a token is never an input.
    model.eval()
    tokens = torch.zeros(1, 3, dtype=torch.long)
    before = model(tokens)[0]
    with torch.no_grad():
        model.embedding.weight[5] += 1.0
    after = model(tokens)[0]
    changed = (after != before).any(dim=(0, 1))
    assert changed.tolist() == [i == 5 for i in range(LM.vocab_size)]


def test_lm_state_continues_the_sequence():
    model = _build("lstm-lm", "cpu", torch.float64)
    tokens = torch.randint(0, LM.vocab_size, (2, 9))
    logits, (h, c) = model(tokens)
    assert logits.shape == (2, 9, LM.vocab_size) and h.shape == c.shape == (LM.num_layers, 2, LM.hidden_size)
    first, state = model(tokens[:, :4])
    rest, (h2, c2) = model(tokens[:, 4:], state)
    testing.assert_close(torch.cat([first, rest], dim=1), logits)
    testing.assert_close(h2, h), testing.assert_close(c2, c)


def _greedy_by_recomputation(model, prompt, steps):
    """Each next token: the argmax of the last logits of a full forward over everything so far."""
    tokens = prompt
    for _ in range(steps):
        logits, _ = model(tokens)
        tokens = torch.cat([tokens, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return tokens


def test_lm_greedy_generation_matches_recomputation():
    model = _build("lstm-lm", "cpu", torch.float64, dropout=0.5)  # generate() must switch dropout off
    prompt = torch.randint(0, LM.vocab_size, (3, 4))
    steps_seen = []
    model.lstm.register_forward_pre_hook(lambda module, inputs: steps_seen.append(inputs[0].shape[1]))
    generated = model.generate(prompt, 12, temperature=0.0)
    assert model.training  # the mode is restored
    # The prompt once, then one step per new token: the state is carried, nothing is recomputed.
    assert steps_seen == [4] + [1] * 11
    model.eval()
    expected = _greedy_by_recomputation(model, prompt, 12)
    assert generated.shape == (3, 16) and torch.equal(generated, expected)
    assert torch.equal(model.generate(prompt, 12, top_k=1), expected)
    assert torch.equal(model.generate(prompt[1], 12, temperature=0.0), expected[1])  # an unbatched prompt
    assert torch.equal(model.generate(prompt, 0), prompt)


def test_lm_sampling_is_seeded_and_keeps_to_the_top_k():
    model = _build("lstm-lm", "cpu", torch.float64).eval()
    prompt = torch.randint(0, LM.vocab_size, (4, 3))
    first = model.generate(prompt, 20, temperature=1.5, top_k=3, generator=torch.Generator().manual_seed(7))
    again = model.generate(prompt, 20, temperature=1.5, top_k=3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, again)
    logits, _ = model(first[:, :-1])
    top3 = logits[:, prompt.shape[1] - 1:].topk(3, dim=-1).indices  # the scores of every generated position
    assert (top3 == first[:, prompt.shape[1]:].unsqueeze(-1)).any(dim=-1).all()
    unrestricted = model.generate(prompt, 20, temperature=1.5, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(unrestricted, first)  # top_k changed the draws
    assert not torch.equal(first, model.generate(prompt, 20, top_k=3, generator=torch.Generator().manual_seed(8)))


# --------------------------------------------------------------------------- GRUClassifier


@pytest.mark.parametrize("pooling", ["mean", "final", "mean+final"])
def test_gru_pools_over_the_valid_steps_only(pooling):
    model = _build("gru-classifier", "cpu", torch.float64, pooling=pooling)
    tokens, lengths, _ = _gru_batch()
    logits = model(tokens, lengths)
    assert logits.shape == (4, GRU.num_classes)
    # Each row alone, cut to its length, gives the same logits: padding is never read.
    for row, length in enumerate(lengths.tolist()):
        alone = model(tokens[row: row + 1, :length], torch.tensor([length]))
        testing.assert_close(logits[row: row + 1], alone, name=f"row {row}")
    padded = tokens.clone()
    padded[torch.arange(9).unsqueeze(0) >= lengths.unsqueeze(1)] = GRU.vocab_size - 1
    testing.assert_close(model(padded, lengths.tolist()), logits)  # lengths as a list


# --------------------------------------------------------------------------- ConvLSTMPredictor


def test_conv_lstm_predictions_are_causal():
    model = _build("conv-lstm-predictor", "cpu", torch.float64)
    (frames,) = _conv_batch()
    predictions = model(frames)
    assert predictions.shape == frames.shape
    changed = frames.clone()
    changed[:, 2:] = torch.randn_like(changed[:, 2:])
    after = model(changed)
    testing.assert_close(after[:, :2], predictions[:, :2])  # frames 0, 1 predict frame 2 alone
    assert not torch.allclose(after[:, 2:], predictions[:, 2:])
    expected_loss = torch.nn.functional.mse_loss(predictions[:, :-1], frames[:, 1:])
    testing.assert_close(model.loss(frames), expected_loss)


# --------------------------------------------------------------------------- tasks


def test_repeating_sequences():
    tokens, targets = tasks.repeating_sequences(64, 20, 7, 2, 5, generator=torch.Generator().manual_seed(3))
    assert tokens.shape == targets.shape == (64, 20) and tokens.dtype == torch.long
    assert torch.equal(targets[:, :-1], tokens[:, 1:])
    sequence = torch.cat([tokens, targets[:, -1:]], dim=1)
    periods = []
    for row in sequence:
        periods.append(min(p for p in range(1, 6) if torch.equal(row[p:], row[:-p])))
    assert set(periods) <= set(range(1, 6)) and len(set(periods)) > 2
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 7
    again = tasks.repeating_sequences(64, 20, 7, 2, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again[0], tokens)


@pytest.mark.parametrize("rule", ["majority", "parity"])
def test_bit_sequences(rule):
    tokens, lengths, labels = tasks.bit_sequences(200, 2, 9, rule, generator=torch.Generator().manual_seed(4))
    assert tokens.shape == (200, 9) and int(lengths.min()) >= 2 and int(lengths.max()) <= 9
    for row, length, label in zip(tokens.tolist(), lengths.tolist(), labels.tolist()):
        assert set(row[length:]) <= {0} and set(row) <= {0, 1}
        ones = sum(row[:length])
        assert label == (int(ones > length - ones) if rule == "majority" else ones % 2)
    assert 0.2 < labels.float().mean() < 0.8


def test_moving_squares():
    frames = tasks.moving_squares(32, 12, 9, 3, generator=torch.Generator().manual_seed(5))
    assert frames.shape == (32, 12, 1, 9, 9) and frames.dtype == torch.float32
    assert set(frames.unique().tolist()) == {0.0, 1.0}
    assert (frames.sum(dim=(2, 3, 4)) == 9).all()  # one whole 3x3 square in every frame
    rows = frames[:, :, 0].amax(dim=3).argmax(dim=2)  # the top row (first lit) of each frame
    columns = frames[:, :, 0].amax(dim=2).argmax(dim=2)
    dy, dx = rows.diff(dim=1), columns.diff(dim=1)
    assert dy.abs().max() <= 1 and dx.abs().max() <= 1  # one pixel per frame at most
    assert ((dy != 0) | (dx != 0)).all()  # and it never stands still


# --------------------------------------------------------------------------- errors


def _error_cases():
    lm, gru, conv = LSTMLanguageModel(LM), GRUClassifier(GRU), ConvLSTMPredictor(CONV)
    tokens = torch.zeros(2, 5, dtype=torch.long)
    return [
        (lambda: lm(tokens.float()), TypeError, "LSTMLanguageModel: tokens must be int64 or int32; got float32"),
        (lambda: lm(tokens[0]), ValueError, "tokens must be 2-D [B, T]"),
        (lambda: lm(tokens + LM.vocab_size), ValueError, "tokens must be token ids in [0, 11); got ids in [11, 11]"),
        (lambda: lm(tokens, tokens), TypeError, "state must be a pair (h [L, B, H], c [L, B, H]) or None"),
        (lambda: lm.loss(tokens, tokens[:, :4]), ValueError, "targets must be of the tokens' shape (2, 5)"),
        (lambda: lm.generate(tokens, -1), ValueError, "generate: max_new_tokens must be an int >= 0; got -1"),
        (lambda: lm.generate(tokens, 2, top_k=0), ValueError, "top_k must be an int in [1, 11]; got 0"),
        (lambda: lm.generate(tokens, 2, temperature=-1.0), ValueError, "temperature must be a finite float >= 0.0"),
        (lambda: lm.generate(tokens[:, :0], 2), ValueError, "prompt must be at least one token"),
        (lambda: gru(tokens, torch.tensor([5, 6])), ValueError,
         "GRUClassifier: lengths must be in [1, T] with T = 5 (the tokens' length); got lengths in [5, 6]"),
        (lambda: gru(tokens, torch.tensor([0, 2])), ValueError, "lengths must be in [1, T]"),
        (lambda: gru(tokens, torch.tensor([5, 5, 5])), ValueError, "lengths must be [B] with B = 2"),
        (lambda: gru(tokens, torch.tensor([5.0, 5.0])), TypeError, "lengths must be int64 or int32; got float32"),
        (lambda: gru.loss(tokens, torch.tensor([5, 5]), torch.tensor([0])), ValueError,
         "labels must be [B] with B = 2"),
        (lambda: conv(torch.randn(2, 3, 4, 5, 5)), ValueError,
         "ConvLSTMPredictor: frames must be [B, T, C, H, W] with C = 2 (config.channels); got shape (2, 3, 4, 5, 5)"),
        (lambda: conv(torch.randn(3, 2, 5, 5)), ValueError, "frames must be 5-D [B, T, C, H, W]"),
        (lambda: conv(torch.ones(1, 2, 2, 3, 3, dtype=torch.long)), TypeError, "frames must be a floating-point"),
        (lambda: conv.loss(torch.randn(1, 1, 2, 3, 3)), ValueError, "frames must be [B, T, C, H, W] with T >= 2"),
        (lambda: LSTMLanguageModelConfig(layers="jax"), ValueError, "layers must be one of 'fusednn', 'torch'"),
        (lambda: GRUClassifierConfig(pooling="max"), ValueError,
         "pooling must be one of 'mean', 'final', 'mean+final'"),
        (lambda: ConvLSTMPredictorConfig(kernel_size=4), ValueError, "kernel_size must be odd"),
        (lambda: LSTMLanguageModelConfig(hidden_size=0), ValueError, "hidden_size must be an int >= 1; got 0"),
        (lambda: tasks.bit_sequences(4, 5, 3), ValueError, "max_length must be an int >= 5; got 3"),
    ]


def test_bad_arguments_name_the_argument():
    for index, (call, kind, message) in enumerate(_error_cases()):
        with pytest.raises(kind) as info:
            call()
        assert message in str(info.value), (index, str(info.value))
        assert str(info.value).startswith("fusednn.models."), (index, str(info.value))

"""fusednn.models.LinearTransformerLM: the fused kernels against the reference backend (loss
and every parameter's gradient), the torch-layer build, the state carried between calls,
generate() against greedy decoding by full forwards, training on the synthetic task, the
``python -m fusednn train linear_transformer`` command, and argument errors."""

import dataclasses
import re

import pytest
import torch

import fusednn
from fusednn import __main__ as cli
from fusednn import registry, testing
from fusednn.models import LinearTransformerLM, LinearTransformerLMConfig, tasks

# A tiny model, so that each test takes about a second at most on a CPU (through Triton's
# interpreter). Two layers: the second reads the first one's output and state.
LM = LinearTransformerLMConfig(vocab_size=11, embed_dim=8, num_heads=2, num_layers=2, mlp_size=16)
# Where the linear attention's kernels run here (float32 on the CPU through the interpreter).
KERNEL_DEVICE_DTYPES = [(d, t) for d, t in testing.kernel_dtypes(registry.get("linear_attention"))
                        if d == "cuda" or t == torch.float32]


def _build(device="cpu", dtype=torch.float32, **changes):
    """The model with random weights away from the initialisation (norms and biases not 1 and 0)."""
    model = LinearTransformerLM(dataclasses.replace(LM, **changes), device=device, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
    return model


def _batch(device="cpu", B=3, T=7):
    return (torch.randint(0, LM.vocab_size, (B, T), device=device),
            torch.randint(0, LM.vocab_size, (B, T), device=device))


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


@pytest.mark.parametrize("device, dtype", KERNEL_DEVICE_DTYPES)
def test_fused_kernels_match_the_reference_backend(device, dtype):
    """The same model and batch, in the same precision, on the default backend (the fused
    kernels) and on the reference backend. With RetNet's decay (the module's tests cover
    the kernels without it)."""
    model = _build(device, dtype)
    batch = _batch(device)
    with testing.recording_fusednn_calls() as calls:
        ours = _loss_and_gradients(model, batch)
    names = {str(call.op) for call in calls}
    assert any("linear_attention" in n for n in names) and any("layer_norm" in n for n in names), names
    with fusednn.use_backend("reference"), testing.recording_fusednn_calls() as calls:
        truth = _loss_and_gradients(model, batch)
    assert not calls
    _assert_same(ours, truth)


def test_torch_layers_are_the_reference_backend():
    """layers="torch": torch.nn.LayerNorm, the attention on the reference backend, no fused
    op; the same weights give the loss and gradients of the fused build on the reference
    backend (float64: only the rounding of two plain-PyTorch computations differs)."""
    ours = _build(dtype=torch.float64)
    theirs = LinearTransformerLM(dataclasses.replace(LM, layers="torch"), dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    assert type(ours.final_norm) is fusednn.nn.LayerNorm and type(theirs.final_norm) is torch.nn.LayerNorm
    assert type(theirs.blocks[1].mlp_norm) is torch.nn.LayerNorm
    assert type(theirs.blocks[0].attention) is fusednn.nn.LinearAttention
    batch = _batch()
    with testing.recording_fusednn_calls() as calls:
        theirs_result = _loss_and_gradients(theirs, batch)
    assert not calls, "the torch-layer model ran fused ops"
    with fusednn.use_backend("reference"):
        truth = _loss_and_gradients(ours, batch)
    _assert_same(theirs_result, truth)


# --------------------------------------------------------------------------- state and generation


def test_parameters_and_tied_output_layer():
    model = LinearTransformerLM(LM)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    E, M, V = LM.embed_dim, LM.mlp_size, LM.vocab_size
    block = {"attention_norm.weight": (E,), "attention_norm.bias": (E,), "mlp_norm.weight": (E,),
             "mlp_norm.bias": (E,), "mlp.0.weight": (M, E), "mlp.0.bias": (M,), "mlp.2.weight": (E, M),
             "mlp.2.bias": (E,)}
    block.update({f"attention.{p}.{n}": (E, E) if n == "weight" else (E,)
                  for p in ("q_proj", "k_proj", "v_proj", "out_proj") for n in ("weight", "bias")})
    assert shapes == {"embedding.weight": (V, E), "final_norm.weight": (E,), "final_norm.bias": (E,),
                      "output_bias": (V,), **{f"blocks.{i}.{n}": s for i in range(2) for n, s in block.items()}}
    # The output layer is the embedding: the logits move with a row never used as an input.
    model.eval()
    tokens = torch.zeros(1, 3, dtype=torch.long)
    with torch.no_grad():
        before = model(tokens)[0]
        model.embedding.weight[5] += 1.0
        after = model(tokens)[0]
    assert (after != before).any(dim=(0, 1)).tolist() == [i == 5 for i in range(V)]
    # N(0, 1/E), so that the first logits have unit scale.
    big = LinearTransformerLM(dataclasses.replace(LM, vocab_size=4096, embed_dim=64, num_heads=4))
    assert abs(big.embedding.weight.std().item() - 64**-0.5) < 0.01
    assert big.blocks[0].attention.decay is not None and LinearTransformerLM(
        dataclasses.replace(LM, decay=None)).blocks[0].attention.decay is None


@pytest.mark.parametrize("device, dtype", KERNEL_DEVICE_DTYPES)
def test_state_continues_the_sequence(device, dtype):
    model = _build(device, dtype)
    tokens = torch.randint(0, LM.vocab_size, (2, 9), device=device)
    with torch.no_grad():
        logits, state = model(tokens)
        first, middle = model(tokens[:, :4])
        rest, continued = model(tokens[:, 4:], middle)
    H, D = LM.num_heads, LM.embed_dim // LM.num_heads
    assert logits.shape == (2, 9, LM.vocab_size) and len(state) == LM.num_layers
    assert all(S.shape == (2, H, D, D) and z.shape == (2, H, D) and S.dtype == torch.float32 for S, z in state)
    testing.assert_close(torch.cat([first, rest], dim=1), logits, name="logits")
    for layer, ((S, z), (S2, z2)) in enumerate(zip(state, continued)):
        testing.assert_close(S2, S, name=f"S of layer {layer}")
        testing.assert_close(z2, z, name=f"z of layer {layer}")


def _greedy_by_recomputation(model, prompt, steps):
    """Each next token: the argmax of the last logits of a full forward over everything so far."""
    tokens = prompt
    for _ in range(steps):
        logits, _ = model(tokens)
        tokens = torch.cat([tokens, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return tokens


def test_greedy_generation_matches_full_forwards():
    """Greedy decoding from the carried states picks the tokens that full forwards over
    everything so far pick (float64 on the reference backend: no near-tie can flip; that
    the kernels continue a sequence from a state as the full forward does is tested above)."""
    model = _build(dtype=torch.float64, dropout=0.5)  # generate() must switch dropout off
    prompt = torch.randint(0, LM.vocab_size, (3, 4))
    lengths_seen = []
    model.blocks[1].attention.register_forward_pre_hook(lambda module, inputs: lengths_seen.append(inputs[0].shape[1]))
    with fusednn.use_backend("reference"):
        generated = model.generate(prompt, 10, temperature=0.0)
        assert model.training  # the mode is restored
        # The prompt once, then one position per new token from the carried states.
        assert lengths_seen == [4] + [1] * 9
        model.eval()
        with torch.no_grad():
            expected = _greedy_by_recomputation(model, prompt, 10)
        assert generated.shape == (3, 14) and torch.equal(generated, expected)
        assert torch.equal(model.generate(prompt, 10, top_k=1), expected)
        assert torch.equal(model.generate(prompt[1], 10, temperature=0.0), expected[1])  # an unbatched prompt
        assert torch.equal(model.generate(prompt, 0), prompt)


def test_sampling_is_seeded_and_keeps_to_the_top_k():
    model = _build(dtype=torch.float64).eval()
    prompt = torch.randint(0, LM.vocab_size, (4, 3))
    with fusednn.use_backend("reference"):
        first = model.generate(prompt, 10, temperature=1.5, top_k=3, generator=torch.Generator().manual_seed(7))
        again = model.generate(prompt, 10, temperature=1.5, top_k=3, generator=torch.Generator().manual_seed(7))
        logits, _ = model(first[:, :-1])
    assert torch.equal(first, again)
    top3 = logits[:, prompt.shape[1] - 1:].topk(3, dim=-1).indices  # the scores of every generated position
    assert (top3 == first[:, prompt.shape[1]:].unsqueeze(-1)).any(dim=-1).all()


# --------------------------------------------------------------------------- training


def test_training_lowers_the_loss():
    """25 Adam steps of a one-block model on the CLI's task (shorter sequences, fewer
    tokens), on the reference backend: the fused kernels' agreement with it is tested
    above, and through the interpreter every step would take seconds. Seeded: the same
    numbers on every run; the held-out loss falls to 0.50 of its start (chance is ln 8 =
    2.08; the first period of each row cannot be predicted)."""
    task = dataclasses.replace(
        tasks.TASKS["linear_transformer"], learning_rate=1e-2, batch_size=16,
        build=lambda layers, device: LinearTransformerLM(LinearTransformerLMConfig(
            vocab_size=8, embed_dim=16, num_heads=2, num_layers=1, mlp_size=32, layers=layers)),
        batch=lambda B, generator, device: tasks.repeating_sequences(B, 16, 8, 2, 3, generator=generator))
    torch.manual_seed(0)
    model = task.build("fusednn", torch.device("cpu"))
    with fusednn.use_backend("reference"):
        result = tasks.train(model, task, steps=25, batch_size=task.batch_size, seed=0, device=torch.device("cpu"))
    assert result.steps == 25 and result.timed_steps == 24 and result.units > 0 and result.seconds > 0
    assert result.loss_after < 0.6 * result.loss_before, result


def test_train_command(capsys, monkeypatch):
    """``python -m fusednn train linear_transformer``: the fused build, then the torch-layer
    build from the same weights on the same batches (on the reference backend here: through
    the interpreter the default model's steps take seconds; the kernels are tested above)."""
    monkeypatch.setenv("FUSEDNN_BACKEND", "reference")
    assert cli.main(["train", "linear_transformer", "--steps", "2", "--batch-size", "2", "--device", "cpu",
                     "--seed", "1"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert out.startswith("linear_transformer on cpu: LinearTransformerLM: ") and "batch 2, 2 steps" in out
    runs = re.findall(r"^(fusednn|torch  ) layers: loss (\d+\.\d+) -> (\d+\.\d+) \(held-out batch\), ([\d,]+) "
                      r"tokens/s \(1 timed steps, (\d+\.\d+) s\), ([\d,]+\.\d\d) MiB saved for backward$", out, re.M)
    assert [r[0].strip() for r in runs] == ["fusednn", "torch"], out
    assert runs[0][1] == runs[1][1]  # the same initial weights and held-out batch
    assert "2/2 loss" in captured.err


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("changes, error, match", [
    (dict(embed_dim=10, num_heads=4), ValueError, r"embed_dim must be divisible by num_heads = 4; got 10"),
    (dict(num_layers=0), ValueError, r"num_layers must be an int >= 1; got 0"),
    (dict(decay="xpos"), ValueError, r"decay must be one of None, 'retnet'; got 'xpos'"),
    (dict(feature_map="exp"), ValueError, r"feature_map must be one of 'elu\+1', 'relu', 'identity'; got 'exp'"),
    (dict(dropout=1.0), ValueError, r"dropout must be a finite float in \[0.0, 1.0\); got 1.0"),
    (dict(layers="jax"), ValueError, r"layers must be one of 'fusednn', 'torch'; got 'jax'"),
])
def test_config_errors(changes, error, match):
    with pytest.raises(error, match=r"fusednn\.models\.LinearTransformerLMConfig: " + match):
        dataclasses.replace(LM, **changes)


def test_bad_arguments_name_the_argument():
    model = LinearTransformerLM(LM)
    where = r"fusednn\.models\.LinearTransformerLM"
    with pytest.raises(TypeError, match=where + r": tokens must be int64 or int32; got float32"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=where + r": tokens must be \[B, T\] with T >= 1; got shape \(2, 0\)"):
        model(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=where + r": tokens must be token ids in \[0, 11\); got ids in \[0, 11\]"):
        model(torch.tensor([[0, 11]]))
    with pytest.raises(TypeError, match=where + r": state must be a tuple of L = 2 layer states \(S, z\) or None"):
        model(torch.zeros(2, 3, dtype=torch.long), [None])
    with pytest.raises(ValueError, match=where + r"\.loss: targets must be of the tokens' shape \(2, 3\)"):
        model.loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=where + r"\.generate: prompt must be at least one token"):
        model.generate(torch.zeros(2, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=where + r"\.generate: top_k must be an int in \[1, 11\]; got 12"):
        model.generate(torch.zeros(2, 1, dtype=torch.long), 3, top_k=12)
    with pytest.raises(ValueError, match=r"fusednn\.ops\.linear_attention: initial_state"):
        model(torch.zeros(2, 3, dtype=torch.long), ((torch.zeros(2, 2, 4, 3), torch.zeros(2, 2, 4)),) * 2)

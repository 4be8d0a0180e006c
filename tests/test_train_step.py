"""train-step: SGD and AdamW steps as flow IR, against torch.optim over several steps, on one device and
distributed (every step equal to the single-device reference under the adversarial interleaving)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from fir import api
from fir.syntax.diagnostics import FirError
from fir_tools.fir_run import main as fir_run

MLP = """
{mesh}
func.func @step(%x: tensor<16x6xf32>{xs}, %labels: tensor<16xi32>{xs},
                %w1: tensor<6x12xf32> {{trainable = true}}, %b1: tensor<12xf32> {{trainable = true}},
                %w2: tensor<12x4xf32> {{trainable = true}}) -> tensor<f32>{fattrs} {{
  %h = flow.matmul %x, %w1
  %hb = flow.add %h, %b1
  %a = flow.tanh %hb
  %logits = flow.matmul %a, %w2
  %loss = flow.cross_entropy %logits, %labels
  func.return %loss
}}
"""

PARAMS = ("w1", "b1", "w2")


def _program(mesh: bool = False) -> str:
    if mesh:
        return MLP.format(mesh="sbp.mesh @dp = [4]", xs=" {sbp = [S(0)]}", fattrs=" attributes {mesh = @dp}")
    return MLP.format(mesh="", xs="", fattrs="")


def _state(prog: api.Program, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs, zero optimizer state, step 0."""
    inputs = prog.random_inputs(seed)
    for name in list(inputs):
        if name.endswith((".m", ".v", ".momentum")) or name == "step":
            inputs[name] = np.zeros_like(inputs[name])
    return inputs


def _advance(state: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The next step's inputs: every `X.next` result replaces argument X."""
    return {k: outputs.get(f"{k}.next", v) for k, v in state.items()}


def _torch_steps(torch, state, kind: str, steps: int, **hyper):
    """The same training in PyTorch: the parameters and losses after each step."""
    params = {n: torch.tensor(state[n], requires_grad=True) for n in PARAMS}
    x, labels = torch.tensor(state["x"]), torch.tensor(state["labels"]).long()
    opt = (torch.optim.AdamW if kind == "adamw" else torch.optim.SGD)(list(params.values()), **hyper)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        h = torch.tanh(x @ params["w1"] + params["b1"])
        loss = torch.nn.functional.cross_entropy(h @ params["w2"], labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {n: p.detach().numpy() for n, p in params.items()}, losses


@pytest.mark.parametrize("kind,options,hyper", [
    ("adamw", 'optimizer="adamw" lr=0.01 weight_decay=0.1', dict(lr=0.01, weight_decay=0.1)),
    ("sgd", 'optimizer="sgd" lr=0.1 momentum=0.9 weight_decay=0.01', dict(lr=0.1, momentum=0.9,
                                                                              weight_decay=0.01)),
    ("sgd", 'optimizer="sgd" lr=0.5', dict(lr=0.5)),
])
def test_steps_equal_torch_optim(kind, options, hyper):
    torch = pytest.importorskip("torch", reason="PyTorch (test-only: pip install torch==2.13.0) is not installed")
    step = api.parse(_program(), "mlp.fir").apply(f"train-step{{{options}}}")
    state = _state(step)
    want, want_losses = _torch_steps(torch, state, kind, 5, **hyper)
    losses = []
    for _ in range(5):
        out = step.reference(state)
        losses.append(float(out["loss"]))
        state = _advance(state, out)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5, atol=1e-6)
    for n in PARAMS:
        np.testing.assert_allclose(state[n], want[n], rtol=2e-5, atol=2e-6, err_msg=n)
    if kind == "adamw":
        assert float(state["step"]) == 5
    assert losses[-1] < losses[0]


def test_distributed_steps_equal_one_device():
    # Data parallel on 4 devices: the gradients are partial and reduced to the replicated parameters and state
    step = api.parse(_program(mesh=True), "dp.fir").apply('train-step{optimizer="adamw" lr=0.01}')
    text = step.text()
    assert "%w1.next" in text and "%w1.m.next" in text and "%step.next" in text
    state = _state(step)
    for _ in range(5):
        run = step.run(state, check=True, interleave="adversarial")
        assert not run.mismatches(), run.mismatches()
        state = _advance(state, run.outputs)
    planned = step.apply("sbp-infer,insert-boxing").text()
    assert planned.count("comm.all_reduce") >= len(PARAMS)  # each P gradient reduced for its B update


def test_bad_options_are_errors():
    prog = api.parse(_program(), "mlp.fir")
    with pytest.raises(FirError, match='unknown optimizer "adam"'):
        prog.apply('train-step{optimizer="adam"}')
    with pytest.raises(FirError, match="beta2 must be in"):
        prog.apply('train-step{optimizer="adamw" beta2=1.5}')
    with pytest.raises(FirError, match="no function has a trainable argument"):
        api.parse("func.func @f(%x: tensor<f32>) -> tensor<f32> {\n  func.return %x\n}\n", "f.fir").apply(
            "train-step")


# ----------------------------------------------------------------------------------------------- fir-run --steps
def _step_file(tmp_path, optimizer: str = 'optimizer="adamw" lr=0.05', mesh: bool = False) -> str:
    path = tmp_path / "step.fir"
    path.write_text(api.parse(_program(mesh), "mlp.fir").apply(f"train-step{{{optimizer}}}").text())
    return str(path)


def _losses(out: str) -> list[str]:
    return [line.split()[3] for line in out.splitlines() if line.startswith("step ")]


def test_fir_run_trains_resumes_and_repeats_bit_for_bit(tmp_path, capsys):
    step = _step_file(tmp_path)
    assert fir_run([step, "--steps", "6"]) == 0
    six = _losses(capsys.readouterr().out)
    assert len(six) == 6 and float(six[-1]) < float(six[0])
    assert fir_run([step, "--steps", "6"]) == 0
    assert _losses(capsys.readouterr().out) == six  # deterministic
    state = str(tmp_path / "state.safetensors")
    assert fir_run([step, "--steps", "4", "--save-state", state, "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert fir_run([step, "--steps", "2", "--state", state, "--check", "--interleave", "adversarial"]) == 0
    out = capsys.readouterr().out
    assert _losses(out) == six[4:] and out.count("check: ok") == 2  # the saved state resumes exactly


def test_fir_run_takes_stacked_batches_and_data_parallel_steps(tmp_path, capsys):
    step = _step_file(tmp_path, 'optimizer="sgd" lr=0.1 momentum=0.9', mesh=True)
    rng = np.random.default_rng(1)
    batches = tmp_path / "batches.npz"
    np.savez(batches, x=rng.standard_normal((3, 16, 6)).astype(np.float32),
             labels=rng.integers(0, 4, (3, 16)).astype(np.int32))
    assert fir_run([step, "--steps", "4", "--batches", str(batches), "--check", "--interleave", "adversarial"]) == 0
    out = capsys.readouterr().out
    assert len(_losses(out)) == 4 and out.count("check: ok") == 4
    prog = api.load(step)
    run = prog.train(4, batches=str(batches))
    assert [f"{x:.6g}" for x in run.losses] == _losses(out)


def test_fir_run_training_errors(tmp_path, capsys):
    step = _step_file(tmp_path)
    with pytest.raises(SystemExit) as e:
        fir_run([step, "--state", "x.safetensors"])
    assert e.value.code == 2
    assert "--state needs --steps" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    assert fir_run([step, "--steps", "1", "--state", str(bad)]) == 1
    assert "not a valid safetensors file" in capsys.readouterr().err
    plain = tmp_path / "plain.fir"
    plain.write_text(_program())
    assert fir_run([str(plain), "--steps", "2"]) == 1
    assert "is not a training step" in capsys.readouterr().err
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((2, 16, 5), np.float32))
    assert fir_run([step, "--steps", "1", "--batches", str(wrong)]) == 1
    assert "stacked batches of the argument are [K, 16, 6] f32" in capsys.readouterr().err


def test_an_mlp_learns_a_synthetic_classification_task():
    # 4 classes, each a Gaussian blob in 6-D around its own centre: learnable, not trivially separable at start.
    # 60 AdamW steps over 8 stacked batches reach 95 % accuracy on held-out points, bit-identically twice.
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((4, 6)) * 2.0

    def sample(n):
        labels = rng.integers(0, 4, n)
        return (centres[labels] + rng.standard_normal((n, 6))).astype(np.float32), labels.astype(np.int32)

    xs, ys = zip(*(sample(16) for _ in range(8)))
    batches = {"x": np.stack(xs), "labels": np.stack(ys)}
    step = api.parse(_program(), "mlp.fir").apply('train-step{optimizer="adamw" lr=0.03}')
    runs = [step.train(60, seed=0, batches=batches) for _ in range(2)]
    assert runs[0].losses == runs[1].losses
    assert all(np.array_equal(runs[0].state[k], runs[1].state[k]) for k in runs[0].state)
    s = runs[0].state
    x, y = sample(400)
    logits = np.tanh(x @ s["w1"] + s["b1"]) @ s["w2"]
    accuracy = float(np.mean(np.argmax(logits, axis=1) == y))
    assert runs[0].losses[-1] < 0.3 * runs[0].losses[0] and accuracy >= 0.95, (runs[0].losses[::10], accuracy)


def test_zero_sharded_parameters_and_state_are_an_sbp_choice():
    # w1 (and so its AdamW state) split over the data-parallel axis: its gradient is reduce-scattered, the update
    # runs on each device's rows (the forward uses w1 split as sbp-infer finds cheapest); every step equals one
    # device
    text = _program(mesh=True).replace("%w1: tensor<6x12xf32> {trainable = true}",
                                       "%w1: tensor<6x12xf32> {trainable = true, sbp = [S(0)]}")
    step = api.parse(text, "zero.fir").apply('train-step{optimizer="adamw" lr=0.01}')
    boxed = step.apply("sbp-infer,insert-boxing").text()
    assert "%w1.grad.b = comm.reduce_scatter %w1.grad" in boxed and "%w2.grad.b = comm.all_reduce %w2.grad" in boxed
    assert "%w1.m: tensor<6x12xf32> {sbp = [S(0)]}" in step.text()
    state = _state(step)
    for _ in range(3):
        run = step.run(state, check=True, interleave="adversarial")
        assert not run.mismatches()
        state = _advance(state, run.outputs)


def test_state_files_without_safetensors_are_a_clear_error_before_training(tmp_path, capsys, monkeypatch):
    step = _step_file(tmp_path)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as on an install without the train extra
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    assert fir_run([step, "--steps", "2", "--save-state", str(tmp_path / "s.safetensors")]) == 1
    out, err = capsys.readouterr()
    assert "--save-state needs the safetensors package" in err and "pip install 'fir[train]'" in err
    assert "step 1" not in out and not (tmp_path / "s.safetensors").exists()

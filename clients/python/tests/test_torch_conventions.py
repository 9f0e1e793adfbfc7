# SPDX-License-Identifier: MIT
"""CurvdOptimizer and the torch.optim conventions (issue 22): no silent
surprises (the fallback warning, buffers and dropout in callbacks),
step(closure), and clear errors where a torch.optim habit cannot work."""

import copy
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import curvd
from curvd.torch import CurvdOptimizer, TorchOracle, get_loss, model_blocks
from curvd.torch.oracle import rng_state
from test_optim import RUNS, blobs, mlp, need


class Mixed(nn.Module):
    """One of each kind of parameter K-FAC leaves to its fallback."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.emb = nn.Embedding(5, 8)
        self.lstm = nn.LSTM(8, 8)
        self.gconv = nn.Conv2d(2, 2, 1, groups=2)
        self.head = nn.Linear(8, 3)


def bn_mlp(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(dropout),
                         nn.Linear(8, 3))


def closure_of(opt, model, x, y):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


# ---- A. no silent surprises -----------------------------------------------


def test_kfac_warns_once_which_parameters_go_to_the_fallback(daemon, offered):
    need(offered, "kfac")
    with pytest.warns(UserWarning) as record:
        CurvdOptimizer(Mixed(), daemon.url, "kfac")
    caught = [w for w in record if w.category is UserWarning]
    assert len(caught) == 1, [str(w.message) for w in record]
    msg = str(caught[0].message)
    assert msg.startswith("kfac models the curvature of nn.Linear and nn.Conv2d layers only; "
                          "these parameters go to its fallback optimizer (adagrad_diag, "
                          "fallback_lr=0.01) as vector blocks, without curvature:\n")
    lines = msg.split("\n")[1:]
    assert lines == [
        "  'bn' (BatchNorm1d: weight, bias): not an nn.Linear or nn.Conv2d layer",
        "  'emb' (Embedding: weight): not an nn.Linear or nn.Conv2d layer",
        "  'lstm' (LSTM: weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0): not an "
        "nn.Linear or nn.Conv2d layer",
        "  'gconv' (Conv2d: weight, bias): a grouped convolution (groups=2)"]
    assert "fc" not in msg and "head" not in msg


def test_no_fallback_warning_without_fallback_parameters(daemon, offered):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        if "kfac" in offered:
            CurvdOptimizer(mlp(), daemon.url, "kfac")
            # The biases asked for as vector blocks are no surprise.
            CurvdOptimizer(mlp(), daemon.url, "kfac", bias_blocks=True)
        CurvdOptimizer(Mixed(), daemon.url, "sgd", {"lr": 0.1})  # no fallback: no warning


@pytest.mark.parametrize("kind,form", [("kfac", "batch"), ("kfac", "closure"),
                                       ("hf", "batch")])
def test_callbacks_leave_batchnorm_statistics_alone(daemon, offered, layers_refused, kind,
                                                    form):
    """Only the step's own forward pass updates the running statistics:
    num_batches_tracked counts steps, and after the first step the running
    mean is that of one training-mode forward pass."""
    need(offered, kind, layers_refused)
    model = bn_mlp(1)
    fresh = copy.deepcopy(model)
    x, y = blobs(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the BatchNorm gains' fallback warning
        opt = CurvdOptimizer(model, daemon.url, kind, RUNS[kind][1])
    bn = model[1]
    steps = 3
    for k in range(steps):
        if form == "closure":
            opt.step(closure_of(opt, model, x, y))
        else:
            opt.step(x, y)
        if k == 0:
            with torch.no_grad():
                fresh(x)
            assert torch.equal(bn.running_mean, fresh[1].running_mean)
            assert torch.equal(bn.running_var, fresh[1].running_var)
    assert int(bn.num_batches_tracked) == steps
    assert opt.session.refresh().steps == steps


def test_loss_callbacks_see_the_steps_dropout_masks():
    """With the step's random state, a loss callback at θ + 0 gives the
    step's loss exactly (the same dropout masks); without it, it does not."""
    model = bn_mlp(2, dropout=0.5)
    x, y = blobs(seed=2)
    blocks = model_blocks(model)
    loss = get_loss("cross_entropy")
    rng = rng_state(torch.device("cpu"))
    step_loss = float(loss.per_example(model(x), y).mean())
    zero = {b.name: torch.zeros(b.wire_shape).numpy() for b in blocks}
    before = [b.clone() for b in model.buffers()]
    same = TorchOracle(model, blocks, loss, x, y, rng=rng).losses([zero, zero])
    assert same == [step_loss, step_loss]
    other = TorchOracle(model, blocks, loss, x, y).losses([zero])
    assert other != [step_loss]
    for a, b in zip(before, model.buffers()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["kfac", "hf"])
def test_callbacks_do_not_move_the_global_random_state(daemon, offered, layers_refused, kind):
    """A step draws from torch's generator what its own forward pass draws
    (the dropout masks), however many callbacks it answers."""
    need(offered, kind, layers_refused)
    model = bn_mlp(3, dropout=0.2)
    twin = copy.deepcopy(model)
    x, y = blobs(seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = CurvdOptimizer(model, daemon.url, kind, RUNS[kind][1])
    torch.manual_seed(33)
    opt.step(x, y)
    after_step = torch.rand(4)
    assert opt.last_report  # the step answered callbacks (kfac adaptive, hf)
    torch.manual_seed(33)
    twin(x)
    assert torch.equal(after_step, torch.rand(4))


# ---- B. the model, not its parameters ---------------------------------------


@pytest.mark.parametrize("what", ["generator", "list"])
def test_parameters_instead_of_the_model_are_refused(daemon, what):
    model = mlp()
    params = model.parameters() if what == "generator" else list(model.parameters())
    with pytest.raises(TypeError) as e:
        CurvdOptimizer(params, daemon.url, "sgd", {"lr": 0.1})
    assert str(e.value) == (
        f"CurvdOptimizer needs the model (a torch.nn.Module), not {what}: "
        "CurvdOptimizer(model, client, kind, ...) instead of torch.optim's "
        "Optimizer(model.parameters(), ...); it maps the model's layers to the session's "
        "blocks itself")


# ---- C. step(closure) -------------------------------------------------------


@pytest.mark.parametrize("run", ["sgd", "adagrad_diag", "adagrad_full", "adagrad_bma", "mbag",
                                 "mbag_ema", "mbag_n", "kfac", "hf_plain"])
def test_step_with_a_closure_equals_step_with_the_batch(daemon, offered, layers_refused, run):
    """The closure's gradient (and for K-FAC, statistics from the inputs it
    gave the model; for K-FAC and HF, curvature callbacks on those inputs
    and loss callbacks through the closure) train as step(x, y)."""
    kind, config = ("hf", {"precond": "none"}) if run == "hf_plain" else (run, RUNS[run][1])
    need(offered, kind, layers_refused)
    x, y = blobs(seed=4)
    a, b = mlp(4), mlp(4)
    oa = CurvdOptimizer(a, daemon.url, kind, config)
    ob = CurvdOptimizer(b, daemon.url, kind, config)
    closure = closure_of(oa, a, x, y)
    for _ in range(3):
        ret = oa.step(closure)
        assert torch.is_tensor(ret) and ret.grad_fn is not None  # the closure's own loss
        assert float(ret) == pytest.approx(ob.step(x, y), rel=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)
    assert not torch.equal(a[0].weight, mlp(4)[0].weight)
    assert oa.session.refresh().steps == 3


def test_step_with_a_closure_trains_batchnorm_and_dropout_under_kfac(daemon, offered,
                                                                     layers_refused):
    need(offered, "kfac", layers_refused)
    model = bn_mlp(5, dropout=0.1)
    x, y = blobs(seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = CurvdOptimizer(model, daemon.url, "kfac", RUNS["kfac"][1])
    closure = closure_of(opt, model, x, y)
    losses = [float(opt.step(closure)) for _ in range(20)]
    assert losses[-1] < 0.6 * losses[0]
    assert int(model[1].num_batches_tracked) == 20


@pytest.mark.parametrize("kind,config,fix", [
    ("hf", {}, "hf with precond='fisher_diag' or damping='diag' needs per-example gradients "
     "of the batch's loss (grad_sq), which a closure's mean loss does not give: call "
     "step(inputs, targets), or set precond='none' and damping='tikhonov' to step with a "
     "closure"),
    ("hf", {"precond": "none", "damping": "diag"}, "hf with precond='fisher_diag' or "
     "damping='diag' needs per-example gradients of the batch's loss (grad_sq), which a "
     "closure's mean loss does not give: call step(inputs, targets), or set precond='none' "
     "and damping='tikhonov' to step with a closure"),
    ("kfac", {"fisher": "empirical"}, "kfac with fisher='empirical' needs the batch's targets "
     "for its layer statistics, which a closure hides: call step(inputs, targets), or use "
     "fisher='true' (targets sampled from the model) with step(closure)")])
def test_step_with_a_closure_refused_where_it_cannot_work(daemon, offered, kind, config, fix):
    need(offered, kind)
    model = mlp(6)
    x, y = blobs(seed=6)
    opt = CurvdOptimizer(model, daemon.url, kind, config)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError) as e:
        opt.step(closure_of(opt, model, x, y))
    assert str(e.value) == fix
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))


def test_kfac_without_a_batch_names_both_forms(daemon, offered):
    need(offered, "kfac")
    opt = CurvdOptimizer(mlp(), daemon.url, "kfac")
    with pytest.raises(ValueError, match=re.escape(
            "kfac needs the mini-batch for its layer statistics: call step(inputs, targets) "
            "or step(closure)")):
        opt.step()


# ---- E. one parameter group, curvd's own state -------------------------------


def test_add_param_group_is_refused(daemon):
    opt = CurvdOptimizer(mlp(), daemon.url, "sgd", {"lr": 0.1})
    with pytest.raises(ValueError) as e:
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))], "lr": 0.01})
    assert str(e.value) == (
        "CurvdOptimizer has one parameter group, the model's: the session's layout is fixed "
        "when it is created; add parameters to the model before constructing the optimizer, "
        "or give them an optimizer of their own")
    assert len(opt.param_groups) == 1


def test_load_state_dict_refuses_a_torch_optimizers_state(daemon):
    model = mlp()
    opt = CurvdOptimizer(model, daemon.url, "sgd", {"lr": 0.1})
    adam = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError) as e:
        opt.load_state_dict(adam.state_dict())
    assert str(e.value) == (
        "CurvdOptimizer.load_state_dict takes what CurvdOptimizer.state_dict() returned "
        "(format 'curvd.torch.CurvdOptimizer/2', with the session's state), not a torch "
        "optimizer's state_dict (with 'state' and 'param_groups'): curvd's state cannot be "
        "seeded from another optimizer's")
    other = CurvdOptimizer(mlp(), daemon.url, "adagrad_diag", {"lr": 0.1})
    other.step(*blobs())
    with pytest.raises(ValueError) as e:
        opt.load_state_dict(other.state_dict())
    assert str(e.value) == "the state names a session of adagrad_diag; this optimizer is sgd"


# ---- D. the session from construction ---------------------------------------


class Backwards(nn.Module):
    """Registers its layers in the opposite order to calling them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(9)
        self.second = nn.Linear(8, 3)
        self.first = nn.Linear(4, 8)

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


def test_the_session_exists_from_construction(daemon, client):
    model = mlp(9)
    opt = CurvdOptimizer(model, daemon.url, "sgd", {"lr": 0.1})
    sid = opt.session.id
    assert opt.state_dict()["session"] == sid
    assert client.session(sid).steps == 0 and client.session(sid).config["lr"] == 0.1
    opt.step(*blobs(seed=9))
    assert opt.session.id == sid and client.session(sid).steps == 1
    # Loading a state deletes the empty session made at construction, kept
    # or not.
    again = CurvdOptimizer(copy.deepcopy(model), daemon.url, "sgd", keep_session=True)
    fresh = again.session.id
    again.load_state_dict(opt.state_dict())
    assert again.session.id not in (sid, fresh) and again.session.steps == 1
    with pytest.raises(curvd.NotFound):
        client.session(fresh)
    again.session.delete()


def test_layers_called_out_of_registration_order_get_a_session_in_call_order(daemon, client):
    opt = CurvdOptimizer(Backwards(), daemon.url, "adagrad_diag", {"lr": 0.1})
    made = opt.session.id
    assert [b["name"] for b in opt.session.layout] == ["second", "first"]
    opt.param_groups[0]["lr"] = 0.05  # kept across the replacement
    opt.step(*blobs(seed=9))
    assert opt.session.id != made
    assert [b["name"] for b in opt.session.layout] == ["first", "second"]
    assert client.session(opt.session.id).config["lr"] == 0.05
    with pytest.raises(curvd.NotFound):
        client.session(made)

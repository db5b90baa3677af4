"""Data-parallel training of ConditionalRewardModel: 2 gloo processes under DistributedDataParallel,
ragged shares of one batch, crm_loss(reduction="sum", normalizer=loss_normalizer(...)), must end
with the parameters of a single process trained on the whole batch with the mean loss."""

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# torch, not crm_kernels: importing torch._dynamo after a gloo group has started aborts the process
# ("terminate called without an active exception") in about 1 run in 4 on the project machine,
# with no crm_kernels code involved. An optimizer's constructor and any custom op's first call
# import it, so it is imported here, before the workers start their group.
import torch._dynamo  # noqa: F401, E402

transformers = pytest.importorskip("transformers")

from crm_kernels import ConditionalRewardModel, crm_loss  # noqa: E402
from crm_kernels.distributed import loss_normalizer  # noqa: E402

VOCAB, TAG, STEPS, LR = 40, 7, 3, 0.05
SHARES = [(0, 3), (3, 8)]  # rank 0 gets 3 trajectories, rank 1 gets 5


def make_model():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    return ConditionalRewardModel(transformers.LlamaModel(config), TAG)


def make_batch():
    """8 right-padded rows with tags; outcomes and known first errors drawn to fit each row's steps."""
    generator = torch.Generator().manual_seed(1)
    rows, outcome, first_error = [], [], []
    for index in range(8):
        length = int(torch.randint(6, 16, (1,), generator=generator))
        row = torch.randint(8, VOCAB, (length,), generator=generator)
        row[torch.rand(length, generator=generator) < 0.35] = TAG
        row[-1] = TAG  # at least one step
        steps = int((row == TAG).sum())
        correct = index % 3 == 0
        outcome.append(correct)
        first_error.append(-1 if correct or index % 4 == 1 else int(torch.randint(steps, (1,), generator=generator)))
        rows.append(row)
    input_ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
    return input_ids, mask, torch.tensor(outcome), torch.tensor(first_error)


def train(model, input_ids, mask, outcome, first_error, loss_fn, after_backward=lambda: None):
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    for _ in range(STEPS):
        output = model(input_ids, mask)
        loss = loss_fn(output.hazard_logits, output.cu_steps, outcome, first_error)
        optimizer.zero_grad()
        loss.backward()
        after_backward()
        optimizer.step()


def worker(rank, world_size, rendezvous, out_path, averaged):
    torch.set_num_threads(1)
    # A rendezvous file in the test's own directory: no port to race for with other runs.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        start, end = SHARES[rank]
        input_ids, mask, outcome, first_error = (t[start:end] for t in make_batch())
        model = make_model()
        normalizer = loss_normalizer(end - start, gradients_averaged=averaged)
        after_backward = lambda: None  # noqa: E731
        if averaged:
            trained = torch.nn.parallel.DistributedDataParallel(model)
        else:
            # Summed gradients, as with a SUM all-reduce of one's own. It runs after backward, over
            # the parameters in their fixed order: collectives issued from gradient hooks follow
            # the autograd engine's order, which nothing guarantees to be the same on both ranks.
            trained = model

            def after_backward():
                for parameter in model.parameters():
                    dist.all_reduce(parameter.grad)

        def loss_fn(*args):
            return crm_loss(*args, reduction="sum", normalizer=normalizer)

        # DDP's forward must run through the wrapper for its gradient hooks.
        train(trained, input_ids, mask, outcome, first_error, loss_fn, after_backward)
        if rank == 0:
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out_path)
    finally:
        dist.destroy_process_group()
    # Leave without running destructors. Freeing the DDP reducer at the function's return
    # destroys its gloo process group with the GIL held. That joins gloo's run-loop thread, which
    # may be releasing a thread-local state that holds a Python object and waits for the GIL:
    # a deadlock inside torch (gdb: ~ProcessGroupGloo -> thread::join on the main thread,
    # ~ThreadLocalState -> take_gil on the run loop). It hung about 1 run in 4 here.
    os._exit(0)


def run_workers(*args, timeout=240):
    """mp.spawn with a deadline: a stuck collective fails the test instead of hanging CI."""
    context = mp.start_processes(worker, args=(2, *args), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"data-parallel workers did not finish in {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("averaged", [True, False], ids=["ddp_averaged", "summed_allreduce"])
def test_data_parallel_matches_single_process(tmp_path, averaged):
    out_path = str(tmp_path / "rank0.pt")
    run_workers(str(tmp_path / "rendezvous"), out_path, averaged)
    distributed = torch.load(out_path)

    single = make_model()
    train(single, *make_batch(), lambda *args: crm_loss(*args, reduction="mean"))
    initial = make_model().state_dict()
    moved = 0.0
    for name, value in single.state_dict().items():
        torch.testing.assert_close(distributed[name], value, rtol=0, atol=1e-6, msg=name)
        moved = max(moved, float((value - initial[name]).abs().max()))
    assert moved > 1e-2  # training moved the parameters, so agreement is not trivial


@pytest.mark.slow
def test_local_means_would_not_match():
    """Why the normalizer: averaging the two ranks' own means weighs 3 and 5 trajectories equally."""
    input_ids, mask, outcome, first_error = make_batch()
    model = make_model()
    output = model(input_ids, mask)
    full = crm_loss(output.hazard_logits, output.cu_steps, outcome, first_error)
    losses = crm_loss(output.hazard_logits, output.cu_steps, outcome, first_error, reduction="none")
    local_means = torch.stack([losses[start:end].mean() for start, end in SHARES]).mean()
    assert abs(float((local_means - full).detach())) > 1e-3


def test_loss_normalizer_single_process():
    assert loss_normalizer(5) == 5.0 and loss_normalizer(0) == 1.0
    with pytest.raises(ValueError, match="local_count"):
        loss_normalizer(-1)

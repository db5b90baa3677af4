"""crm_kernels.trainer.CRMTrainer on the real transformers.Trainer (no stand-in): one optimizer step
of plain SGD (lr 1, no clipping, no weight decay), so that each parameter moves by exactly its
gradient, compared with the gradient of the objective's mean over the whole batch computed by hand:
with gradient accumulation in one process, and on 2 gloo ranks under DDP (the Trainer's own
distributed launch from environment variables, in spawned processes)."""

import dataclasses
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

# As in tests/test_ddp.py: torch._dynamo imported before any gloo group starts (importing it
# after aborted processes about 1 run in 4 on the project machine).
import torch._dynamo  # noqa: F401, E402

pytest.importorskip("transformers")

from crm_kernels import ConditionalRewardModel, data, evaluation  # noqa: E402
from crm_kernels.data import PRMCollator  # noqa: E402
from crm_kernels.tasks import arithmetic  # noqa: E402
from crm_kernels.trainer import CRMTrainer, CRMTrainingArguments  # noqa: E402

TOKENIZER = arithmetic.build_tokenizer()
EXAMPLES = [s.example for s in arithmetic.make_dataset(5, seed=4)]


def one_step(objective, tmp_path, *, padding_free=False, accumulation=2, batch_size=3, examples=EXAMPLES,
             **arguments):  # fmt: skip
    """Parameter moves of one Trainer step over `examples` (with 5 and the defaults: micro-batches
    of 3 and 2 trajectories)."""
    model = arithmetic.small_model(TOKENIZER, seed=0, objective=objective)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    args = CRMTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
        max_steps=1, learning_rate=1.0, optim="sgd", weight_decay=0.0, max_grad_norm=0.0, warmup_steps=0,
        lr_scheduler_type="constant", report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
        **arguments,
    )  # fmt: skip
    collator = PRMCollator(TOKENIZER, arithmetic.STEP_TAG, padding_free=padding_free)
    trainer = CRMTrainer(model=model, args=args, train_dataset=examples, data_collator=collator)
    trainer.train()
    return {name: before[name] - parameter.detach() for name, parameter in model.named_parameters()}, trainer


def whole_batch_gradient(objective, examples=EXAMPLES):
    model = arithmetic.small_model(TOKENIZER, seed=0, objective=objective)
    batch = PRMCollator(TOKENIZER, arithmetic.STEP_TAG)(examples)
    output = model(batch["input_ids"], batch["attention_mask"])
    model.loss(output, batch["outcome"], batch["first_error"]).backward()  # the mean over the batch
    return {name: parameter.grad.detach().clone() for name, parameter in model.named_parameters()}, model, batch


def assert_same(moves, gradients):
    for name, gradient in gradients.items():
        torch.testing.assert_close(moves[name], gradient, rtol=2e-4, atol=2e-6, msg=name)


@pytest.mark.parametrize("objective", ["crm", "prm", "orm", "pqm"])
def test_accumulated_step_is_the_whole_batch_mean(objective, tmp_path):
    """Two micro-batches of unequal size (3 and 2 trajectories, and different step counts for PRM):
    the step's gradient is that of the mean over all 5, not a mean of the two means."""
    gradients, model, batch = whole_batch_gradient(objective)
    assert_same(one_step(objective, tmp_path)[0], gradients)

    # The test can fail: the mean of the micro-batch means moves the head differently.
    head = model.value_head.weight
    naive = torch.zeros_like(head)
    for part in (slice(0, 3), slice(3, 5)):
        sub = PRMCollator(TOKENIZER, arithmetic.STEP_TAG)(EXAMPLES[part])
        head.grad = None
        output = model(sub["input_ids"], sub["attention_mask"])
        (model.loss(output, sub["outcome"], sub["first_error"]) / 2).backward()
        naive += head.grad
    assert not torch.allclose(naive, gradients["value_head.weight"], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("objective", ["crm", "pqm"])
def test_padding_free_batches_train_the_same(objective, tmp_path):
    gradients, _, _ = whole_batch_gradient(objective)
    assert_same(one_step(objective, tmp_path, padding_free=True)[0], gradients)


def test_trl_and_math_shepherd_records_train_as_examples(tmp_path):
    """The Trainer takes TRL stepwise-supervision and Math-Shepherd records as they come: one step
    on them moves the model as the same trajectories given as PRMExamples do."""
    trl = [{"prompt": e.prompt, "completions": e.steps, "labels": e.labels} for e in EXAMPLES]
    shepherd = [{"input": " ".join([e.prompt] + [f"{step} ки" for step in e.steps]),
                 "label": " ".join([e.prompt] + [f"{step} {'+' if right else '-'}" for step, right in zip(e.steps, e.labels)])}
                for e in EXAMPLES]  # fmt: skip
    assert_same(one_step("crm", tmp_path / "trl", examples=trl)[0], one_step("crm", tmp_path / "examples")[0])
    # Without a "Step 1:" marker Math-Shepherd's question is part of its first step.
    converted = [data.to_example(record) for record in shepherd]
    assert [example.labels for example in converted] == [e.labels for e in EXAMPLES]
    assert_same(one_step("crm", tmp_path / "shepherd", examples=shepherd)[0],
                one_step("crm", tmp_path / "converted", examples=converted)[0])  # fmt: skip


# Best-of-N groups: 4 problems of the hard task, 5 candidates each (20 records, batches of 6 leave a
# short last one; on 2 ranks the sampler pads a rank's share with a repeat, which must not count).
EVAL_EXAMPLES = [s.example for group in arithmetic.make_groups(4, 5, seed=6, mistakes=arithmetic.HARD)[1]
                 for s in group]  # fmt: skip


def expected_metrics(model, examples=EVAL_EXAMPLES) -> dict:
    """The evaluation metrics of the whole evaluation set at once, from crm_kernels.evaluation."""
    collator = PRMCollator(TOKENIZER, arithmetic.STEP_TAG)
    predictions = evaluation.predict(model, collator, examples)
    batch = collator(examples)
    loss = model.loss(model(batch["input_ids"], batch["attention_mask"]), batch["outcome"], batch["first_error"])
    metrics = {"eval_loss": loss.item()}
    metrics.update({f"eval_{key}": value for key, value in evaluation.localization(
        predictions.first_error_predicted, predictions.first_error, predictions.step_counts).items()})  # fmt: skip
    sizes = torch.unique_consecutive(batch["group"], return_counts=True)[1]
    best = evaluation.best_of_n(predictions.ranking_score, predictions.outcome, torch.cat([torch.zeros(1), sizes.cumsum(0)]).long())
    metrics.update({f"eval_best_of_n_{key}": value for key, value in best.items()})
    return metrics


def assert_same_metrics(got: dict, expected: dict):
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("objective", ["crm", "prm", "orm", "pqm"])
@pytest.mark.parametrize("padding_free", [False, True])
def test_evaluate_gives_the_whole_sets_metrics(objective, padding_free, tmp_path):
    """Loss, localization and Best-of-N over batches of 6 equal those of the 20 records at once."""
    model = arithmetic.small_model(TOKENIZER, seed=1, objective=objective)
    args = CRMTrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=6, report_to=[], use_cpu=True,
                                disable_tqdm=True)  # fmt: skip
    collator = PRMCollator(TOKENIZER, arithmetic.STEP_TAG, padding_free=padding_free)
    metrics = CRMTrainer(model=model, args=args, eval_dataset=EVAL_EXAMPLES, data_collator=collator).evaluate()
    expected = expected_metrics(model)
    assert_same_metrics(metrics, expected)
    assert 0 < expected["eval_flawed_with_known_first_error"] < 20
    assert expected["eval_best_of_n_random"] < expected["eval_best_of_n_oracle"]
    # Without groups there is no Best-of-N, and the prefix is the caller's.
    ungrouped = [dataclasses.replace(example, group=None) for example in EVAL_EXAMPLES]
    metrics = CRMTrainer(model=model, args=args, data_collator=collator).evaluate(ungrouped, metric_key_prefix="dev")
    assert metrics["dev_loss"] == pytest.approx(expected["eval_loss"], rel=1e-5)
    assert not any("best_of_n" in key for key in metrics)


def test_saves_the_model_and_refuses_what_it_cannot_train(tmp_path):
    model = arithmetic.small_model(TOKENIZER, seed=0, objective="prm")
    args = CRMTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = CRMTrainer(model=model, args=args, train_dataset=EXAMPLES,
                         data_collator=PRMCollator(TOKENIZER, arithmetic.STEP_TAG))  # fmt: skip
    trainer.save_model(str(tmp_path / "saved"))
    loaded = ConditionalRewardModel.from_pretrained(str(tmp_path / "saved"))
    assert loaded.objective == "prm"
    torch.testing.assert_close(loaded.value_head.weight, model.value_head.weight)
    with pytest.raises(TypeError, match="model must be a ConditionalRewardModel"):
        CRMTrainer(model=torch.nn.Linear(2, 2), args=args)
    with pytest.raises(ValueError, match="remove_unused_columns must be False"):
        CRMTrainer(model=model, args=CRMTrainingArguments(output_dir=str(tmp_path), remove_unused_columns=True,
                                                          report_to=[], use_cpu=True))  # fmt: skip


# ---- two ranks --------------------------------------------------------------------------------

RANK_EXAMPLES = [s.example for s in arithmetic.make_dataset(6, seed=4)]  # 3 per rank, no sampler padding


def rank_worker(rank, port, out_dir, objective):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")  # fmt: skip
    torch.set_num_threads(1)
    seen = []
    original = CRMTrainer.units
    CRMTrainer.units = staticmethod(lambda objective, batch: seen.append(original(objective, batch)) or seen[-1])
    moves, trainer = one_step(objective, f"{out_dir}/rank{rank}", accumulation=1, examples=RANK_EXAMPLES,
                              ddp_backend="gloo")  # fmt: skip
    # 19 records: the sampler repeats one to give each rank 10, and the repeat must not count.
    metrics = trainer.evaluate(EVAL_EXAMPLES[:19])
    expected = expected_metrics(trainer.accelerator.unwrap_model(trainer.model), EVAL_EXAMPLES[:19])
    torch.save({"moves": moves, "local_units": seen, "metrics": metrics, "expected": expected},
               f"{out_dir}/rank{rank}.pt")  # fmt: skip
    # Leave without destructors: tearing down a gloo group at exit can deadlock (tests/test_ddp.py).
    os._exit(0)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["prm", "crm"])
def test_two_ranks_take_the_global_mean(objective, tmp_path):
    """2 gloo ranks under the Trainer's DDP, 3 trajectories each: the step is the whole batch's
    mean. For PRM the ranks hold different numbers of steps, so each must divide by the gathered
    count, not its own. Then evaluation on both ranks gives the metrics of the whole set."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    context = mp.start_processes(rank_worker, args=(port, str(tmp_path), objective), nprocs=2, join=False,
                                 start_method="spawn")  # fmt: skip
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks did not finish in 240 s")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    if objective == "prm":
        assert ranks[0]["local_units"] != ranks[1]["local_units"], "equal step counts would not test the gather"
    gradients, _, _ = whole_batch_gradient(objective, RANK_EXAMPLES)
    for rank in ranks:
        assert_same(rank["moves"], gradients)
        assert_same_metrics(rank["metrics"], rank["expected"])

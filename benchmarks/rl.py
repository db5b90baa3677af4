"""crm_kernels.rl against the loop implementations RL trainers run today, in one process.

    .venv/bin/python -m benchmarks.rl [--save]     # bench_out/rl_<device>.json; --save: benchmarks/results/

Workloads (issue 6):
- rollouts: 65,536 trajectories, Poisson(16) steps, 8 tokens per step, groups of 8 samples per
  prompt. Ours: to_token_level + returns_to_go + group_advantages. Loops: a per-sample loop that
  places each step reward at its token (verl's reward managers loop over samples), OpenRLHF's
  reverse loop over token columns for returns, and verl's GRPO grouping (Python loops over samples
  and groups).
- rollouts, out=: the same, with the token rewards written into a [65,536, L] buffer kept across
  calls (`rl.to_token_level(..., out=)`).
- rollouts_gae: GAE (gamma 0.99, lambda 0.95) over the same batch's token layout [65,536, L].
- rollouts_gae, out=: the same GAE writing into two [65,536, L] buffers kept across calls, as a
  trainer can (`rl.gae(..., out=)`): on CPU a fresh output costs the kernel zeroing its pages.
- long_gae: 1,024 responses of 16,384 tokens (random lengths up to that), GAE with gamma 0.99,
  lambda 0.95. Loop: verl's `compute_gae_advantage_return` (reverse loop over token columns).

Medians over repetitions after one warm-up, synchronized on GPUs. Beside each figure, the floor:
the bytes the workload must move at least (inputs read once, outputs written once) over the
copy bandwidth measured in the same run. A ratio is marked "?" when either timing spread more than
benchmarks.report.NOISY_SPREAD (max / min over the repetitions).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from collections import defaultdict

import torch

from benchmarks import report
from benchmarks.run import device_description
from crm_kernels import rl
from crm_kernels.data import cu_steps_from_lengths
from crm_kernels.segment import segment_sum


def copy_bandwidth(device, repeats: int) -> float:
    """Bytes per second of a large tensor copy (read + write): the memory roof of this device."""
    source = torch.ones(64 * 2**20, device=device)  # 256 MiB of float32
    target = torch.empty_like(source)
    return 2 * source.numel() * source.element_size() / statistics.median(timed(lambda: target.copy_(source), repeats, device))


def gae_bytes(rewards, values, mask) -> int:
    """GAE's minimum traffic: rewards, values and the mask read once, advantages and returns written."""
    return (3 * rewards.numel() * rewards.element_size() + values.numel() * values.element_size()
            + mask.numel() * mask.element_size())  # fmt: skip


def timed(function, repeats: int, device) -> list[float]:
    function()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def timing(ours, loops, repeats: int, device) -> dict:
    """Medians of ours and of the loops (which run a third as often: they are slow), and whether
    either spread too much for their ratio to be trusted."""
    ours_times, loops_times = timed(ours, repeats, device), timed(loops, max(1, repeats // 3), device)
    return {"ours_s": statistics.median(ours_times), "loops_s": statistics.median(loops_times),
            "noisy": report.is_noisy(ours_times) or report.is_noisy(loops_times)}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The loops trainers run (their shapes, restated)


def loop_token_level(rewards, cu_steps, step_token_index, seq_len):
    out = torch.zeros(cu_steps.numel() - 1, seq_len, device=rewards.device)
    bounds = cu_steps.tolist()
    for i in range(len(bounds) - 1):
        out[i, step_token_index[bounds[i]: bounds[i + 1]]] = rewards[bounds[i]: bounds[i + 1]]
    return out


def loop_returns(token_rewards, mask, gamma=1.0):
    """OpenRLHF get_cumulative_returns: reverse loop over token columns."""
    returns = torch.zeros_like(token_rewards)
    cumulative = torch.zeros(token_rewards.shape[0], device=token_rewards.device)
    token_rewards = token_rewards * mask
    for t in reversed(range(token_rewards.shape[1])):
        cumulative = token_rewards[:, t] + gamma * cumulative
        returns[:, t] = cumulative
    return returns


def loop_grpo(scores, index, eps=1e-6):
    """verl compute_grpo_outcome_advantage's grouping."""
    id2score = defaultdict(list)
    for i in range(scores.shape[0]):
        id2score[index[i]].append(scores[i])
    id2mean, id2std = {}, {}
    for idx, group in id2score.items():
        if len(group) == 1:
            id2mean[idx], id2std[idx] = torch.tensor(0.0), torch.tensor(1.0)
        else:
            stacked = torch.stack(group)
            id2mean[idx], id2std[idx] = stacked.mean(), stacked.std()
    out = scores.clone()
    for i in range(scores.shape[0]):
        out[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + eps)
    return out


def loop_gae(token_rewards, values, mask, gamma, lam):
    """verl compute_gae_advantage_return: reverse loop over token columns."""
    last = 0
    advantages = []
    length = token_rewards.shape[-1]
    for t in reversed(range(length)):
        next_values = values[:, t + 1] if t < length - 1 else 0.0
        delta = token_rewards[:, t] + gamma * next_values - values[:, t]
        last = delta + gamma * lam * last
        advantages.append(last)
    advantages = torch.stack(advantages[::-1], dim=1)
    return advantages * mask, (advantages + values) * mask


# ---------------------------------------------------------------------------------------------


def rollouts(device, repeats):
    generator = torch.Generator().manual_seed(0)
    trajectories, group = 65_536, 8
    lengths = torch.poisson(torch.full((trajectories,), 16.0), generator=generator).long().clamp(min=1)
    cu_steps = cu_steps_from_lengths(lengths).to(device)
    tokens_per_step = 8
    seq_len = int(lengths.max()) * tokens_per_step
    within = torch.arange(int(cu_steps[-1]), device=device) - cu_steps[:-1].repeat_interleave(lengths.to(device))
    step_token_index = within * tokens_per_step + tokens_per_step - 1
    rewards = -torch.rand(int(cu_steps[-1]), generator=generator).to(device)
    cu_groups = torch.arange(0, trajectories + 1, group, device=device)
    index = [i // group for i in range(trajectories)]
    mask = torch.arange(seq_len, device=device)[None, :] < (lengths.to(device) * tokens_per_step)[:, None]

    def ours():
        token_level = rl.to_token_level(rewards, cu_steps, step_token_index, seq_len)
        returns = rl.returns_to_go(rewards, cu_steps)
        scores = segment_sum(rewards, cu_steps)  # log S(T) of each trajectory
        return token_level, returns, rl.group_advantages(scores, cu_groups)

    def loops():
        token_level = loop_token_level(rewards, cu_steps, step_token_index, seq_len)
        returns = loop_returns(token_level, mask)
        return token_level, returns, loop_grpo(token_level.sum(1), index)

    token_buffer = torch.empty(trajectories, seq_len, device=device)

    def ours_into_buffer():  # the same, the token rewards written into a buffer kept across calls
        token_level = rl.to_token_level(rewards, cu_steps, step_token_index, seq_len, out=token_buffer)
        returns = rl.returns_to_go(rewards, cu_steps)
        scores = segment_sum(rewards, cu_steps)
        return token_level, returns, rl.group_advantages(scores, cu_groups)

    ours_out, loop_out = ours(), loops()
    assert all(torch.equal(a, b) for a, b in zip(ours_into_buffer(), ours_out))
    torch.testing.assert_close(ours_out[0], loop_out[0])
    torch.testing.assert_close(ours_out[2], loop_out[2], rtol=1e-4, atol=1e-4)
    steps = int(cu_steps[-1])
    # The [B, L] token rewards written once; step rewards, offsets and indices read once; returns written.
    floor_bytes = trajectories * seq_len * 4 + steps * (4 + 8 + 4) + cu_steps.numel() * 8
    placement = {"workload": "rollouts: to_token_level + returns_to_go + group_advantages, 65,536 trajectories x "
                             "Poisson(16) steps, 8 tokens/step, groups of 8",
                 "steps": steps, "seq_len": seq_len, "floor_bytes": floor_bytes,
                 **timing(ours, loops, repeats, device)}  # fmt: skip
    placement_out = {**placement, "workload": "rollouts, out=: as above, the token rewards into a reused buffer "
                                              "(rl.to_token_level(..., out=))",
                     **timing(ours_into_buffer, loops, repeats, device)}  # fmt: skip

    values = torch.randn(trajectories, seq_len, generator=generator).to(device) * mask
    token_rewards = ours_out[0]
    gae_ours = lambda: rl.gae(token_rewards, values, mask, 0.99, 0.95)  # noqa: E731
    gae_loops = lambda: loop_gae(token_rewards, values, mask.float(), 0.99, 0.95)  # noqa: E731
    torch.testing.assert_close(gae_ours()[0], gae_loops()[0], rtol=1e-4, atol=1e-4)
    gae = {"workload": f"rollouts_gae: GAE over the same batch's token layout [65,536, {seq_len}]",
           "tokens": int(mask.sum()), "floor_bytes": gae_bytes(token_rewards, values, mask),
           **timing(gae_ours, gae_loops, repeats, device)}  # fmt: skip
    # The same call writing into buffers a trainer keeps across steps (out=): no fresh pages to zero.
    outputs = (torch.empty_like(values), torch.empty_like(values))
    gae_into = lambda: rl.gae(token_rewards, values, mask, 0.99, 0.95, out=outputs)  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(gae_into(), gae_ours()))
    gae_out = {**gae, "workload": "rollouts_gae, out=: GAE as above into reused buffers (rl.gae(..., out=))",
               **timing(gae_into, gae_loops, repeats, device)}  # fmt: skip
    return [placement, placement_out, gae, gae_out]


def long_gae(device, repeats):
    generator = torch.Generator().manual_seed(1)
    responses, length = 1024, 16_384
    rewards = torch.randn(responses, length, generator=generator).to(device)
    values = torch.randn(responses, length, generator=generator).to(device)
    response_lengths = torch.randint(length // 2, length + 1, (responses,), generator=generator).to(device)
    mask = torch.arange(length, device=device)[None, :] < response_lengths[:, None]
    ours = lambda: rl.gae(rewards, values, mask, 0.99, 0.95)  # noqa: E731
    # verl's loop reads the value after the last response token (padding); zero it so that both
    # compute the same thing: a trajectory ends at its last response token.
    values_masked = values * mask
    loops = lambda: loop_gae(rewards * mask, values_masked, mask.float(), 0.99, 0.95)  # noqa: E731
    torch.testing.assert_close(ours()[0], loops()[0], rtol=1e-3, atol=1e-3)
    return {"workload": "long_gae: 1,024 responses x up to 16,384 tokens, gamma 0.99, lambda 0.95",
            "tokens": int(mask.sum()), "floor_bytes": gae_bytes(rewards, values, mask), 
            **timing(ours, loops, repeats, device)}  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--save", action="store_true", help="write to benchmarks/results/ (default: bench_out/)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = device_description(device)
    bandwidth = copy_bandwidth(device, args.repeats)
    rows = [*rollouts(device, args.repeats), long_gae(device, args.repeats)]
    for row in rows:
        row["floor_s"] = row["floor_bytes"] / bandwidth
    result = {"device": name, "torch": torch.__version__, "copy_bandwidth_Bps": bandwidth,
              "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "rows": rows}  # fmt: skip
    table = markdown(result)
    print(table)
    out = report.output_dir(args.save) / f"rl_{device.type}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    if args.save:
        report.replace_section(report.ROOT / "README.md", f"bench:rl_{device.type}", table)
    return rows


def markdown(result: dict) -> str:
    lines = [f"Device: {result['device']}; torch {result['torch']}; {result['date']}; copy bandwidth "
             f"{result['copy_bandwidth_Bps'] / 1e9:.1f} GB/s; floor = bytes that must move / that bandwidth.",
             "", "| workload | ours | trainers' loops | speed-up | floor | floor / ours |", "|---|---|---|---|---|---|"]  # fmt: skip
    for row in result["rows"]:
        mark = "?" if row["noisy"] else ""
        lines.append(f"| {row['workload']} | {row['ours_s'] * 1e3:,.1f} ms | {row['loops_s'] * 1e3:,.1f} ms | "
                     f"{row['loops_s'] / row['ours_s']:.1f}x{mark} | {row['floor_s'] * 1e3:,.1f} ms | "
                     f"{row['floor_s'] / row['ours_s']:.0%} |")  # fmt: skip
    lines += ["", f"A speed-up marked ? had a timing spread over {report.NOISY_SPREAD}x (max / min): rerun before trusting it."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

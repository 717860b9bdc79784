"""What the acceptance checks conclude from what their runs left (run.json, metrics.jsonl, logs, a memory
worker's result): plain functions of records, each returning (passed, what it found)."""

import math
import statistics

from trainer.run_record import DONE

EXPECTED_MFU = 0.4  # the throughput a check compares with (not what fails it: --min-mfu)
RECOMPILE = "Recompiling function"  # what TORCH_LOGS=recompiles prints for each recompilation


def train_losses(metrics: list[dict]) -> dict:
    """{step: train_loss} of a run's metrics.jsonl records."""
    return {r["step"]: r["train_loss"] for r in metrics if "train_loss" in r}


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def judge_run(rec: dict, metrics: list[dict], steps: int, min_drop: float) -> tuple[bool, str]:
    """A short training run went right: done at `steps`, finite losses, the train loss fell by `min_drop`."""
    status = rec.get("status")
    if status != DONE:
        error = (rec.get("error") or "").strip().splitlines()
        return False, f"status {status!r} at step {rec.get('step')}" + (f": {error[-1]}" if error else "")
    losses = train_losses(metrics)
    if rec.get("step") != steps or not losses:
        return False, f"step {rec.get('step')} of {steps}, {len(losses)} logged train losses"
    if not all(finite(v) for v in losses.values()) or not finite(rec.get("final_val_loss")):
        return False, f"non-finite loss: train {list(losses.values())}, val {rec.get('final_val_loss')}"
    first, last = losses[min(losses)], losses[max(losses)]
    text = f"{steps} steps, train loss {first:.3f} -> {last:.3f}, val {rec['final_val_loss']:.3f}"
    if first - last < min_drop:
        return False, f"{text}: fell {first - last:.3f}, less than {min_drop}"
    return True, text


def window_rates(metrics: list[dict], key: str) -> list[float]:
    """`key` (tokens_per_s, mfu) of every log window but the first (warm-up), or the first if it is alone."""
    values = [r[key] for r in metrics if key in r]
    return values[1:] if len(values) > 1 else values


def judge_throughput(metrics: list[dict], flops_per_token: float, peak: float | None, world: int,
                     min_mfu: float, where: str) -> tuple[bool, str]:
    """Median tokens/s and MFU of the run's log windows against 40% MFU of `peak` (per GPU, `world` GPUs)."""
    rates = window_rates(metrics, "tokens_per_s")
    if not rates:
        return False, "no tokens/s in metrics.jsonl"
    tps = statistics.median(rates)
    text = f"{tps / 1e6:.3g}M tokens/s"
    if peak is None:
        return tps > 0, f"{text} on {where}; MFU n/a ({where} has no bf16 peak in perf.PEAK_BF16)"
    mfus = window_rates(metrics, "mfu")
    mfu = statistics.median(mfus) if mfus else tps * flops_per_token / (peak * world)
    expected = EXPECTED_MFU * peak * world / flops_per_token
    text += (f" = {mfu:.1%} MFU of {peak / 1e12:.0f} TFLOP/s x {world}; {EXPECTED_MFU:.0%} MFU would be "
             f"{expected / 1e6:.3g}M ({flops_per_token / 1e9:.3g} GFLOP/token)")
    if mfu < min_mfu:
        return False, f"{text}: below {min_mfu:.0%}"
    return True, text


def compare_runs(one: list[dict], many: list[dict], rec_one: dict, rec_many: dict, tol: float) -> tuple[bool, str]:
    """The DDP run logged the same steps as the one-process run, and its losses are within `tol` of them."""
    a, b = train_losses(one), train_losses(many)
    if not a or a.keys() != b.keys():
        return False, f"logged steps differ: {sorted(a)} vs {sorted(b)}"
    diffs = [abs(a[s] - b[s]) for s in a]
    diff = max(diffs) if all(map(math.isfinite, diffs)) else math.nan  # max() would pass a NaN over
    val = abs(rec_one["final_val_loss"] - rec_many["final_val_loss"])
    text = f"train loss max |diff| {diff:.3g} over {len(a)} logs, val |diff| {val:.3g}"
    if not diff <= tol or not val <= tol:  # also false for NaN
        return False, f"{text}: above {tol}"
    return True, text


def judge_memory(r: dict, limit_gib: float, ratio_limit: float = 1.5) -> tuple[bool, str]:
    """A memory worker's result: no OOM, finite losses, peak within `limit_gib` and `ratio_limit` x the estimate."""
    est, est8 = r["estimate_gib"], r["estimate_8_gib"]
    shape = f"n={r['n_embd']} L={r['n_layer']} micro {r['micro']} x {r['seq']}"
    if r.get("oom"):
        return False, f"{shape}: out of memory on a {r['card_gib']:.0f} GiB GPU (estimate {est:.1f} GiB): {r['oom']}"
    if not all(finite(v) for v in r["losses"]):
        return False, f"{shape}: non-finite loss {r['losses']}"
    unit, scale = ("GiB", 1) if r["peak_gib"] >= 0.1 else ("MiB", 1024)
    text = (f"{shape}: peak {r['peak_gib'] * scale:.3g} {unit}, estimate {est * scale:.3g} {unit} "
            f"({est8 * scale:.3g} on each of 8 ranks); fwd+bwd {r['tokens_per_s']:,.0f} tokens/s"
            + (f" = {r['mfu']:.0%} MFU" if r.get("mfu") is not None else "") + f", step {r['step_s']:.2f} s")
    if r["peak_gib"] > limit_gib:
        return False, f"{text}: above {limit_gib} GiB"
    if r["peak_gib"] > ratio_limit * est:
        return False, f"{text}: {r['peak_gib'] / est:.2f} x the estimate the micro-batches are sized with"
    return True, text


def count_recompiles(text: str) -> int:
    return sum(RECOMPILE in line for line in text.splitlines())



def judge_optimizers(results: dict, ratio_limit: float = 1.5) -> tuple[bool, str]:
    """The optimizers worker's result: every optimizer's losses finite and falling, no graph compiled after the
    first step, and its peak memory within `ratio_limit` x experiments.cost's estimate."""
    found, problems = [], []
    for name, r in results.items():
        losses, ratio = r["losses"], r["peak_gib"] / r["estimate_gib"]
        found.append(f"{name} {losses[0]:.2f}->{losses[-1]:.2f} {ratio:.2f}x")
        if not all(finite(v) for v in losses) or not losses[-1] < losses[0]:
            problems.append(f"{name}: loss {losses[0]:.4g} -> {losses[-1]:.4g}")
        if r["graphs_later"]:
            problems.append(f"{name}: {r['graphs_later']} graph(s) compiled after the first step")
        if ratio > ratio_limit:
            problems.append(f"{name}: peak {r['peak_gib']:.3g} GiB, {ratio:.2f} x the estimate")
    first, later = (sum(r[k] for r in results.values()) for k in ("graphs_first_step", "graphs_later"))
    text = (f"{len(results)} optimizers, loss first->last and peak / estimate: " + ", ".join(found)
            + f"; graphs compiled at first steps {first}, after them {later}")
    return not problems, text if not problems else f"{text}; " + "; ".join(problems)


def judge_split(result: dict, tol: float) -> tuple[bool, str]:
    """The split worker's result: on every rank, the split optimizer's weights equal the unsplit one's, or differ
    by at most `tol` x the largest update."""
    found, problems = [], []
    for name, r in result["optimizers"].items():
        rel = r["max_diff"] / r["max_update"] if r["max_update"] else math.inf
        found.append(f"{name} " + ("bitwise" if r["unequal"] == 0 else f"{r['unequal']}/{r['tensors']} differ, "
                                                                        f"{rel:.2g} of the update"))
        if r["unequal"] and not rel <= tol:
            problems.append(f"{name}: differs by {rel:.2g} of the largest update, above {tol}")
        if not r["max_update"] > 0:
            problems.append(f"{name}: the weights did not move")
    text = f"{result['world']} ranks, split vs every rank stepping every matrix, 3 steps: " + ", ".join(found)
    return not problems, text if not problems else f"{text}; " + "; ".join(problems)

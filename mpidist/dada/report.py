"""The summaries rank 0 prints at the end of a DADA run and of the centralized ADDA baseline."""
from __future__ import annotations

from .tasks import TASKS, user_domains


def _mb(b: float) -> str:
    return f"{b / 1e6:.3f} MB"


def task_words(args) -> str:
    """``task digits-rot (embedded UCI digits, ...)``, or the user's domains as given."""
    if user_domains(args):
        return f"source {args.source_data} -> target {args.target_data}"
    return f"task {args.task} ({TASKS[args.task].about})"


def accuracy_lines(task, res, who: str, labels: dict | None = None) -> list[str]:
    """The source's accuracy, then each target's before and after adaptation (``labels``: each
    target's domain as the user named it, by target index)."""
    lines = [f"source accuracy on its own test set: {100 * res['source_acc']:.2f}%"]
    for i, rot, before, after in res["targets"]:
        if labels is not None:
            where = labels[i]
        else:
            where = f"{rot:g} deg" if task.rotated else task.target
        lines.append(f"{who} {i} ({where}): source-only {100 * before:.2f}% -> adapted "
                     f"{100 * after:.2f}% ({100 * (after - before):+.2f} points)")
    return lines


def user_lines(networks: str | None, domains) -> list[str]:
    """The user's networks with their parameter counts, and every rank's data."""
    lines = [f"networks: {networks}"] if networks else []
    if domains:
        label, n, shape = domains[0]
        lines.append(f"data: source {label}: {n} training samples of shape {shape}; "
                     + "; ".join(f"target rank {r} {lb}: {m}" for r, (lb, m, _) in
                                 enumerate(domains) if r) + " training samples")
    return lines


def setup_distributed(args, strategy, k: int, domains=None, networks: str | None = None) -> list[str]:
    """What a distributed run does: rank 0's header before its first step, and the head of its
    summary."""
    return [f"DADA {strategy.name} (p = {strategy.period}), {args.steps} steps, "
            f"{task_words(args)}, 1 source + {k} target(s)",
            *(user_lines(networks, domains) if networks else [])]


def setup_centralized(args) -> str:
    """What a ``--centralized`` run does: its header, and the head of its summary."""
    return (f"ADDA centralized (one process, one discriminator), {args.steps} steps, "
            f"{task_words(args)}")


def summary_distributed(run, args, strategy, res, k: int, domains=None,
                        networks: str | None = None) -> None:
    task = TASKS[args.task]
    labels = {r: d[0] for r, d in enumerate(domains)} if domains and user_domains(args) else None
    lines = [*setup_distributed(args, strategy, k, domains, networks),
             *accuracy_lines(task, res, "target rank", labels)]
    lines.append(
        f"bytes exchanged after the initial transfer: {res['syncs']} sync-ups x "
        f"{_mb(res['disc_bytes'])} (D's size), one allreduce each on '{strategy.channel}'; "
        f"rank 0 handed {_mb(res['bytes_sent'])} to them (a ring allreduce sends "
        f"2(n-1)/n = {2 * k / (k + 1):.2f} of that out of each rank); "
        f"initial transfer (E, C, D) {_mb(res['init_bytes'])}")
    lines.append(f"time: {res['seconds']:.1f} s ({res['adapt_seconds']:.1f} s adapting, "
                 f"{1e3 * res['adapt_seconds'] / max(res['steps_run'], 1):.1f} ms per step)")
    run.say(*lines)


def summary_centralized(run, res) -> None:
    args, task = run.args, TASKS[run.args.task]
    labels = {i + 1: lb for i, lb in enumerate(res["labels"][1:])} if user_domains(args) else None
    lines = [setup_centralized(args),
             *([f"networks: {res['networks']}"] if res.get("networks") else []),
             *accuracy_lines(task, res, "target", labels)]
    lines.append("bytes exchanged: 0 (one process)")
    lines.append(f"time: {res['seconds']:.1f} s ({res['adapt_seconds']:.1f} s adapting)")
    run.say(*lines)

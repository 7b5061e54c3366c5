"""The summaries rank 0 prints at the end of a DADA run and of the centralized ADDA baseline."""
from __future__ import annotations

from .tasks import TASKS


def _mb(b: float) -> str:
    return f"{b / 1e6:.3f} MB"


def accuracy_lines(task, res, who: str) -> list[str]:
    """The source's accuracy, then each target's before and after adaptation."""
    lines = [f"source accuracy on its own test set: {100 * res['source_acc']:.2f}%"]
    for i, rot, before, after in res["targets"]:
        where = f"{rot:g} deg" if task.rotated else task.target
        lines.append(f"{who} {i} ({where}): source-only {100 * before:.2f}% -> adapted "
                     f"{100 * after:.2f}% ({100 * (after - before):+.2f} points)")
    return lines


def summary_distributed(run, args, strategy, res, k: int) -> None:
    task = TASKS[args.task]
    lines = [f"DADA {strategy.name} (p = {strategy.period}), {args.steps} steps, task "
             f"{args.task} ({task.about}), 1 source + {k} target(s)",
             *accuracy_lines(task, res, "target rank")]
    lines.append(
        f"bytes exchanged after the initial transfer: {res['syncs']} sync-ups x "
        f"{_mb(res['disc_bytes'])} (D's size) per direction per peer on '{strategy.channel}'; "
        f"rank 0 sent {_mb(res['bytes_sent'])} and received {_mb(res['bytes_received'])}; "
        f"initial transfer (E, C, D) {_mb(res['init_bytes'])}")
    lines.append(f"time: {res['seconds']:.1f} s ({res['adapt_seconds']:.1f} s adapting, "
                 f"{1e3 * res['adapt_seconds'] / max(res['steps_run'], 1):.1f} ms per step)")
    run.say(*lines)


def summary_centralized(run, res) -> None:
    args, task = run.args, TASKS[run.args.task]
    lines = [f"ADDA centralized (one process, one discriminator), {args.steps} steps, task "
             f"{args.task} ({task.about})", *accuracy_lines(task, res, "target")]
    lines.append("bytes exchanged: 0 (one process)")
    lines.append(f"time: {res['seconds']:.1f} s ({res['adapt_seconds']:.1f} s adapting)")
    run.say(*lines)

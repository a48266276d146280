"""Shows a task as a user would look at it.

    python -m scalable_elicitation.data tweet_sentiment [--tokenizer PATH] [--cache-dir DIR]

Prints sizes, label balance, text-length percentiles (tokens of a `tokenizers` tokenizer.json, a
folder holding one, or the name of an offline asset such as `minilm`; whitespace words without
one), two examples, and the accuracy of any weak labels cached under `--cache-dir`.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from scalable_elicitation.data import DEFAULT_TASK, load_task


def make_length_fn(tokenizer: str | None):
    """(unit name, text -> length) for a tokenizer path/asset name, or whitespace words."""
    if tokenizer is None:
        return "words", lambda text: len(text.split())
    from tokenizers import Tokenizer

    path = pathlib.Path(tokenizer)
    if not path.exists():
        from scalable_elicitation.assets import ASSETS, asset_path
        if tokenizer not in ASSETS:
            raise FileNotFoundError(f"tokenizer {tokenizer} is neither a file, a folder nor an "
                                    f"asset name ({sorted(ASSETS)})")
        path = asset_path(tokenizer)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()  # tokenizer.json files often pad/truncate to a fixed length
    tok.no_truncation()
    return "tokens", lambda text: len(tok.encode(text, add_special_tokens=False).ids)


def describe(task, length_fn, unit: str, cache_dir=None) -> str:
    """The report printed by the command."""
    lines = [f"task {task.name}  (source {task.info.get('source')}, held out by "
             f"{task.info.get('holdout')}, seed {task.info.get('seed')})"]
    for note in task.info.get("notes", []):
        lines.append(f"  note: {note}")
    for name, split in (("train", task.train), ("test", task.test)):
        lengths = np.array([length_fn(t) for t in split["text"]])
        pct = np.percentile(lengths, [5, 50, 95, 99, 100]) if len(lengths) else [np.nan] * 5
        lines.append(f"{name:5s} n={len(split):6d}  label=1 share {np.mean(split['label']):.3f}  "
                     f"{unit} p5/p50/p95/p99/max {'/'.join(f'{p:.0f}' for p in pct)}")
        stats = task.info.get(f"{name}_stats")
        if stats:
            lines.append(f"      dropped: {stats}")
    for k in range(min(2, len(task.train))):
        lines.append(f"--- example {k} (label {task.train['label'][k]}, id {task.train['id'][k]})")
        lines.append(task.train["text"][k])
    if cache_dir is not None:
        from scalable_elicitation.labelers import cached_metadata
        entries = cached_metadata(cache_dir, task)
        if not entries:
            lines.append(f"weak labels: none cached for this task under {cache_dir}")
        for meta in entries:
            m = meta["metrics"]
            lines.append(f"weak labels {meta['labeler']} seed {meta['seed']}: pool accuracy "
                         f"{m['pool_accuracy']:.3f} AUROC {m['pool_auroc']:.3f}; test accuracy "
                         f"{m['test_accuracy']:.3f} AUROC {m['test_auroc']:.3f}")
    else:
        lines.append("weak labels: pass --cache-dir to show cached weak-label accuracy")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scalable_elicitation.data",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("task", nargs="?", default=DEFAULT_TASK)
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-test", type=int, default=1000)
    args = parser.parse_args(argv)
    unit, length_fn = make_length_fn(args.tokenizer)
    task = load_task(args.task, seed=args.seed, n_test=args.n_test, cache_dir=args.cache_dir)
    print(describe(task, length_fn, unit, args.cache_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())

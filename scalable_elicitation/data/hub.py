"""The study's Hugging Face tasks: one table of hub ids, configs, splits and schemas, and the
templates of docs/design.md#tasks.

`build_hub_task` turns per-split tables (a `datasets.Dataset`, a pyarrow table or a dict of
lists) into train and test splits; `load_hub_task` is a thin wrapper that fetches the hub splits
and calls it, so tests on local fixtures run exactly the code that reads the real data.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from scalable_elicitation.data import processing
from scalable_elicitation.data.processing import FormatFn

PARQUET_EXPORT = "refs/convert/parquet"  # the hub's parquet export of a script-era dataset


# ---------------------------------------------------------------------------- binarisation


def choose_answer(answers: Sequence[str], gold: int, coin: bool, pick: float,
                  force_wrong: bool = False) -> tuple[str, int] | None:
    """The multiple-choice binarisation of docs/design.md#tasks: the gold answer (label 1) when
    `coin`, else a wrong one drawn uniformly by `pick` (label 0). Wrong answers are those whose text
    differs from the gold text (a duplicated gold string would otherwise be a label-0 correct
    answer). None when the gold index is invalid (hidden labels) or there is no wrong answer."""
    if not 0 <= gold < len(answers):
        return None
    gold_text = answers[gold]
    if coin and not force_wrong:
        return gold_text, 1
    wrong = [a for a in answers if a != gold_text]
    if not wrong:
        return None
    return wrong[min(int(pick * len(wrong)), len(wrong) - 1)], 0


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None  # e.g. HellaSwag's hidden test label ""


# ---------------------------------------------------------------------------- templates


def format_boolq(row, coin, pick):
    return f"Passage: {row['passage']}\nQuestion: {row['question']}", int(bool(row["answer"]))


def format_hellaswag(row, coin, pick):
    gold = _int_or_none(row["label"])
    chosen = choose_answer(row["endings"], -1 if gold is None else gold, coin, pick)
    if chosen is None:
        return None
    ans, label = chosen
    endings = "\n".join(row["endings"])
    return (f"Context:\n{row['ctx']}\n\nContinuations:\n\n{endings}\n\n"
            f'Q: Is "{ans}" the best continuation?', label)


def format_sciq(row, coin, pick):
    answers = [row["correct_answer"], row["distractor1"], row["distractor2"], row["distractor3"]]
    chosen = choose_answer(answers, 0, coin, pick)
    if chosen is None:
        return None
    ans, label = chosen
    return f"Q: {row['question']} A: {ans}", label


def _single_sentence(row, coin, pick):
    label = _int_or_none(row["label"])
    if label not in (0, 1):
        return None  # GLUE's hidden test labels are -1
    return row["sentence"], label


format_cola = _single_sentence
format_sst2 = _single_sentence


def is_none_of_the_above(answer: str) -> bool:
    """CosmosQA's "None of the above choices ." answers."""
    return answer.strip().lower().startswith("none of the above")


def format_cosmos_qa(row, coin, pick):
    answers = [row[f"answer{i}"] for i in range(4)]
    gold = _int_or_none(row["label"])
    if gold is None or not 0 <= gold < 4:
        return None
    # A gold "None of the above" forces label 0: showing it as the answer says nothing about the
    # context, so the study always showed a (wrong) concrete answer instead.
    chosen = choose_answer(answers, gold, coin, pick,
                           force_wrong=is_none_of_the_above(answers[gold]))
    if chosen is None:
        return None
    ans, label = chosen
    return f"Context: {row['context']}\nQuestion: {row['question']}\nAnswer: {ans}", label


def format_quail(row, coin, pick):
    gold = _int_or_none(row["correct_answer_id"])
    chosen = choose_answer(row["answers"], -1 if gold is None else gold, coin, pick)
    if chosen is None:
        return None
    ans, label = chosen
    return f'Passage:\n\n{row["context"]}\n\nQ: "{row["question"]}" Is the answer "{ans}"?', label


def format_social_i_qa(row, coin, pick):
    answers = [row["answerA"], row["answerB"], row["answerC"]]
    gold = _int_or_none(row["label"])  # "1", "2" or "3"
    chosen = choose_answer(answers, -1 if gold is None else gold - 1, coin, pick)
    if chosen is None:
        return None
    ans, label = chosen
    choices = "\n".join(answers)
    return (f'Context:\n{row["context"]}\n\nQuestion: "{row["question"]}"\n\n'
            f'Choices:\n{choices}\n\nIs the answer "{ans}"?', label)


def format_paws(row, coin, pick):
    label = _int_or_none(row["label"])
    if label not in (0, 1):
        return None
    return (f"Sent 1: {row['sentence1']}\nSent 2: {row['sentence2']}\n\n"
            "Q: Are these sentences semantically equivalent?", label)


def format_mmlu(row, coin, pick):
    gold = _int_or_none(row["answer"])
    chosen = choose_answer(row["choices"], -1 if gold is None else gold, coin, pick)
    if chosen is None:
        return None
    ans, label = chosen
    choices = "\n".join(row["choices"])
    return f"{row['question']}\n\n{choices}\n\nA: {ans}.", label


def format_amazon_polarity(row, coin, pick):
    label = _int_or_none(row["label"])
    if label not in (0, 1):
        return None
    return f"{row['title']} {row['content']}", label


def format_anli(row, coin, pick):
    label = _int_or_none(row["label"])
    if label not in (0, 1, 2):
        return None
    return (f"Premise: {row['premise']}\nHypothesis: {row['hypothesis']}\n\n"
            "Does the premise entail the hypothesis?", int(label == 0))


# ---------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class HubSource:
    """Where a task lives on the hub and how its rows look.

    `test_splits` empty means the task has no labelled held-out split: `train_splits` are pooled
    and `n_test` balanced examples are held out at seed 0. `schema` maps every column of the real
    dataset to its kind: "string", "int", "bool", "list<string>" or "struct".
    """
    name: str
    path: str
    config: str | None
    revision: str | None
    train_splits: tuple[str, ...]
    test_splits: tuple[str, ...]
    schema: Mapping[str, str]
    format_fn: FormatFn
    note: str = ""

    @property
    def pooled(self) -> bool:
        return not self.test_splits

    @property
    def splits(self) -> tuple[str, ...]:
        return self.train_splits + self.test_splits


_S = "string"
HUB_TASKS: dict[str, HubSource] = {s.name: s for s in [
    HubSource("boolq", "google/boolq", None, None, ("train",), ("validation",),
              {"question": _S, "answer": "bool", "passage": _S}, format_boolq,
              "no test split: validation held out"),
    HubSource("hellaswag", "Rowan/hellaswag", None, None, ("train",), ("validation",),
              {"ind": "int", "activity_label": _S, "ctx_a": _S, "ctx_b": _S, "ctx": _S,
               "endings": "list<string>", "source_id": _S, "split": _S, "split_type": _S,
               "label": _S}, format_hellaswag, "test labels hidden: validation held out"),
    HubSource("sciq", "allenai/sciq", None, None, ("train", "validation", "test"), (),
              {"question": _S, "distractor3": _S, "distractor1": _S, "distractor2": _S,
               "correct_answer": _S, "support": _S}, format_sciq,
              "all splits pooled, n_test held out at seed 0"),
    HubSource("cola", "nyu-mll/glue", "cola", None, ("train",), ("validation",),
              {"sentence": _S, "label": "int", "idx": "int"}, format_cola,
              "test labels hidden: validation held out (fewer than 1000 balanced)"),
    HubSource("cosmos_qa", "allenai/cosmos_qa", None, PARQUET_EXPORT, ("train",), ("validation",),
              {"id": _S, "context": _S, "question": _S, "answer0": _S, "answer1": _S,
               "answer2": _S, "answer3": _S, "label": "int"}, format_cosmos_qa,
              "script dataset: read from the hub's parquet export; test labels hidden"),
    HubSource("quail", "textmachinelab/quail", None, PARQUET_EXPORT, ("train",), ("validation",),
              {"id": _S, "context_id": _S, "question_id": _S, "domain": _S,
               "metadata": "struct", "context": _S, "question": _S, "question_type": _S,
               "answers": "list<string>", "correct_answer_id": "int"}, format_quail,
              "script dataset: parquet export; no test split: validation held out "
              "(the 'challenge' split is a different distribution and is not used)"),
    HubSource("social_i_qa", "allenai/social_i_qa", None, PARQUET_EXPORT, ("train",),
              ("validation",),
              {"context": _S, "question": _S, "answerA": _S, "answerB": _S, "answerC": _S,
               "label": _S}, format_social_i_qa,
              "script dataset: parquet export; no test split: validation held out"),
    HubSource("paws", "google-research-datasets/paws", "labeled_final", None, ("train",),
              ("test",), {"id": "int", "sentence1": _S, "sentence2": _S, "label": "int"},
              format_paws),
    HubSource("mmlu", "cais/mmlu", "all", None, ("test", "validation", "dev"), (),
              {"question": _S, "subject": _S, "choices": "list<string>", "answer": "int"},
              format_mmlu, "test, validation and dev pooled, n_test held out at seed 0 "
              "(auxiliary_train is other datasets, not MMLU, and is not used)"),
    HubSource("sst2", "stanfordnlp/sst2", None, None, ("train",), ("validation",),
              {"idx": "int", "sentence": _S, "label": "int"}, format_sst2,
              "test labels hidden: validation held out (fewer than 1000 balanced)"),
    HubSource("amazon_polarity", "fancyzhx/amazon_polarity", None, None, ("train",), ("test",),
              {"label": "int", "title": _S, "content": _S}, format_amazon_polarity,
              "3.6M training rows: consider max_train"),
    HubSource("anli_r2", "facebook/anli", None, None, ("train_r2",), ("test_r2",),
              {"uid": _S, "premise": _S, "hypothesis": _S, "label": "int", "reason": _S},
              format_anli, "label 1 = entailment, 0 = neutral or contradiction"),
]}


# ---------------------------------------------------------------------------- tables and schemas


def as_arrow(data: Any) -> pa.Table:
    """A pyarrow table from a `datasets.Dataset`, a pyarrow table or a dict of column lists."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, Mapping):
        return pa.table(dict(data))
    if hasattr(data, "with_format"):  # datasets.Dataset, without importing datasets here
        table = data.with_format("arrow")[:]
        return table if isinstance(table, pa.Table) else pa.Table.from_batches([table])
    raise TypeError(f"expected a datasets.Dataset, pyarrow.Table or dict of lists, got "
                    f"{type(data).__name__}")


def arrow_kind(dtype: pa.DataType) -> str:
    """Our coarse kind of an arrow type (see `HubSource.schema`)."""
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "string"
    if pa.types.is_integer(dtype):
        return "int"
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        inner = arrow_kind(dtype.value_type)
        return f"list<{inner}>"
    if pa.types.is_struct(dtype):
        return "struct"
    if pa.types.is_null(dtype):
        return "null"
    return str(dtype)


def check_schema(source: HubSource, split: str, table: pa.Table) -> None:
    """Raises ValueError naming the dataset, split and columns that do not match the table."""
    problems = []
    for column, kind in source.schema.items():
        if column not in table.column_names:
            problems.append(f"missing column {column!r} ({kind})")
        else:
            got = arrow_kind(table.schema.field(column).type)
            if got != kind and got != "null":
                problems.append(f"column {column!r} is {got}, expected {kind}")
    if problems:
        raise ValueError(f"{source.path} ({source.config or 'default'}) split {split!r} does not "
                         f"match the schema of task {source.name!r}: " + "; ".join(problems))


def build_hub_task(name: str, splits: Mapping[str, Any], *, seed: int, n_test: int,
                   max_train: int | None = None):
    """Train and test splits of hub task `name` from its raw hub splits (keyed by hub split name).

    This is the same code for fixtures and for the real data (see `load_hub_task`).
    Returns (train, test, info).
    """
    source = get_source(name)
    missing = [s for s in source.splits if s not in splits]
    if missing:
        raise ValueError(f"task {name!r} needs the hub splits {list(source.splits)}; "
                         f"missing {missing}")
    tables = {}
    for split in source.splits:
        tables[split] = as_arrow(splits[split])
        check_schema(source, split, tables[split])
    columns = list(source.schema)

    def concat(names):
        return pa.concat_tables([tables[n].select(columns) for n in names],
                                promote_options="default")

    if source.pooled:
        train, test, info = processing.build_splits(
            source.format_fn, seed=seed, n_test=n_test, pool_table=concat(source.train_splits),
            max_train=max_train)
    else:
        train, test, info = processing.build_splits(
            source.format_fn, seed=seed, n_test=n_test, train_table=concat(source.train_splits),
            test_table=concat(source.test_splits), max_train=max_train)
    info.update(source=f"hf:{source.path}" + (f"/{source.config}" if source.config else ""),
                revision=source.revision, train_splits=list(source.train_splits),
                test_splits=list(source.test_splits), notes=[source.note] if source.note else [])
    return train, test, info


def get_source(name: str) -> HubSource:
    """The table row of a hub task; ValueError listing the known names otherwise."""
    if name not in HUB_TASKS:
        raise ValueError(f"unknown hub task {name!r}; known: {sorted(HUB_TASKS)}")
    return HUB_TASKS[name]


def fetch_hub_splits(name: str) -> dict[str, Any]:
    """Downloads (or reads from the `datasets` cache) the raw hub splits of a task."""
    import datasets  # heavy import, only when the hub is read

    source = get_source(name)
    return {split: datasets.load_dataset(source.path, source.config, split=split,
                                         revision=source.revision)
            for split in source.splits}


def load_hub_task(name: str, *, seed: int, n_test: int, max_train: int | None = None):
    """Fetches a hub task and builds its splits; a thin wrapper over `build_hub_task`."""
    return build_hub_task(name, fetch_hub_splits(name), seed=seed, n_test=n_test,
                          max_train=max_train)

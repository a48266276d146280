"""Hub tasks on small local fixtures in each dataset's real schema (no network), plus one
network-marked test that loads each for real."""
import os

import datasets
import numpy as np
import pytest

from scalable_elicitation.data import hub
from scalable_elicitation.data.split import text_id

N_ROWS = 120
S = datasets.Value("string")
I32 = datasets.Value("int32")


def _mc_answers(i, k):
    """k answers of row i; the gold one says GOLD, the others WRONG."""
    return [f"WRONG {i}.{j}" for j in range(k)]


def fixture(name: str, n: int = N_ROWS, seed: int = 0):
    """A `datasets.Dataset` with the real features of task `name`, n distinct rows."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 4, n)
    if name == "boolq":
        data = {"question": [f"is {i} even?" for i in range(n)],
                "answer": [bool(i % 3 == 0) for i in range(n)],
                "passage": [f"passage {i}" for i in range(n)]}
        feats = {"question": S, "answer": datasets.Value("bool"), "passage": S}
    elif name == "hellaswag":
        endings = []
        for i in range(n):
            e = _mc_answers(i, 4)
            e[gold[i]] = f"GOLD {i}"
            endings.append(e)
        data = {"ind": list(range(n)), "activity_label": ["act"] * n,
                "ctx_a": [f"a{i}" for i in range(n)], "ctx_b": ["b"] * n,
                "ctx": [f"ctx {i}" for i in range(n)], "endings": endings,
                "source_id": ["src"] * n, "split": ["train"] * n, "split_type": ["indomain"] * n,
                "label": [str(g) for g in gold]}
        feats = {"ind": I32, "activity_label": S, "ctx_a": S, "ctx_b": S, "ctx": S,
                 "endings": datasets.Sequence(S), "source_id": S, "split": S, "split_type": S,
                 "label": S}
    elif name == "sciq":
        data = {"question": [f"q{i}?" for i in range(n)],
                "distractor3": [f"WRONG {i}.3" for i in range(n)],
                "distractor1": [f"WRONG {i}.1" for i in range(n)],
                "distractor2": [f"WRONG {i}.2" for i in range(n)],
                "correct_answer": [f"GOLD {i}" for i in range(n)],
                "support": [""] * n}
        feats = {k: S for k in data}
    elif name in ("cola", "sst2"):
        data = {"sentence": [f"sentence {i}" for i in range(n)],
                "label": [int(i % 3 == 0) for i in range(n)], "idx": list(range(n))}
        names = ["unacceptable", "acceptable"] if name == "cola" else ["negative", "positive"]
        feats = {"sentence": S, "label": datasets.ClassLabel(names=names), "idx": I32}
    elif name == "cosmos_qa":
        data = {"id": [f"id{i}" for i in range(n)], "context": [f"ctx {i}" for i in range(n)],
                "question": [f"q{i}" for i in range(n)], "label": gold.tolist()}
        for j in range(4):
            data[f"answer{j}"] = [f"GOLD {i}" if gold[i] == j else f"WRONG {i}.{j}"
                                  for i in range(n)]
        # every 10th row's gold answer is "None of the above choices ."
        for i in range(0, n, 10):
            data[f"answer{gold[i]}"][i] = "None of the above choices ."
        feats = {k: S for k in data}
        feats["label"] = I32
    elif name == "quail":
        answers = []
        for i in range(n):
            a = _mc_answers(i, 4)
            a[gold[i]] = f"GOLD {i}"
            answers.append(a)
        data = {"id": [f"id{i}" for i in range(n)], "context_id": ["c"] * n,
                "question_id": [f"q{i}" for i in range(n)], "domain": ["fiction"] * n,
                "metadata": [{"author": "a", "title": "t", "url": "u"}] * n,
                "context": [f"passage {i}" for i in range(n)],
                "question": [f"question {i}" for i in range(n)],
                "question_type": ["Causality"] * n, "answers": answers,
                "correct_answer_id": gold.tolist()}
        feats = {k: S for k in data}
        feats.update(metadata={"author": S, "title": S, "url": S},
                     answers=datasets.Sequence(S), correct_answer_id=I32)
    elif name == "social_i_qa":
        g3 = gold % 3
        data = {"context": [f"ctx {i}" for i in range(n)],
                "question": [f"q{i}" for i in range(n)]}
        for j, letter in enumerate("ABC"):
            data[f"answer{letter}"] = [f"GOLD {i}" if g3[i] == j else f"WRONG {i}.{j}"
                                       for i in range(n)]
        data["label"] = [str(g + 1) for g in g3]
        feats = {k: S for k in data}
    elif name == "paws":
        data = {"id": list(range(n)), "sentence1": [f"s1 {i}" for i in range(n)],
                "sentence2": [f"s2 {i}" for i in range(n)],
                "label": [int(i % 3 == 0) for i in range(n)]}
        feats = {"id": I32, "sentence1": S, "sentence2": S,
                 "label": datasets.ClassLabel(names=["0", "1"])}
    elif name == "mmlu":
        choices = []
        for i in range(n):
            c = _mc_answers(i, 4)
            c[gold[i]] = f"GOLD {i}"
            choices.append(c)
        data = {"question": [f"question {i}" for i in range(n)], "subject": ["law"] * n,
                "choices": choices, "answer": gold.tolist()}
        feats = {"question": S, "subject": S, "choices": datasets.Sequence(S),
                 "answer": datasets.ClassLabel(names=list("ABCD"))}
    elif name == "amazon_polarity":
        data = {"label": [int(i % 3 == 0) for i in range(n)],
                "title": [f"title {i}" for i in range(n)],
                "content": [f"content {i}" for i in range(n)]}
        feats = {"label": datasets.ClassLabel(names=["negative", "positive"]), "title": S,
                 "content": S}
    elif name == "anli_r2":
        data = {"uid": [f"u{i}" for i in range(n)], "premise": [f"p{i}" for i in range(n)],
                "hypothesis": [f"h{i}" for i in range(n)], "label": (gold % 3).tolist(),
                "reason": [""] * n}
        feats = {"uid": S, "premise": S, "hypothesis": S,
                 "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
                 "reason": S}
    else:
        raise KeyError(name)
    return datasets.Dataset.from_dict(data, features=datasets.Features(feats))


def fixture_splits(name, n=N_ROWS):
    source = hub.HUB_TASKS[name]
    return {split: fixture(name, n, seed=k) if not source.pooled or k == 0 else
            fixture(name, n, seed=k).map(lambda ex, k=k: _tag(ex, k))
            for k, split in enumerate(source.splits)}


def _tag(ex, k):
    """Makes pooled splits' rows distinct from each other."""
    key = "question" if "question" in ex else "sentence"
    return {key: f"{ex[key]} (split {k})"}


MC = {"hellaswag", "sciq", "cosmos_qa", "quail", "social_i_qa", "mmlu"}

EXPECTED_ONE_ROW = {
    # The templates of docs/design.md#tasks, written out for a hand-made row.
    "boolq": ({"passage": "P.", "question": "q?", "answer": True}, "Passage: P.\nQuestion: q?", 1),
    "hellaswag": ({"ctx": "C", "endings": ["e0", "e1", "e2", "e3"], "label": "2"},
                  'Context:\nC\n\nContinuations:\n\ne0\ne1\ne2\ne3\n\nQ: Is "e2" the best '
                  "continuation?", 1),
    "sciq": ({"question": "Q?", "correct_answer": "A", "distractor1": "B", "distractor2": "C",
              "distractor3": "D"}, "Q: Q? A: A", 1),
    "cola": ({"sentence": "S.", "label": 1}, "S.", 1),
    "sst2": ({"sentence": "S.", "label": 0}, "S.", 0),
    "cosmos_qa": ({"context": "C.", "question": "Q?", "answer0": "a", "answer1": "b",
                   "answer2": "c", "answer3": "d", "label": 1},
                  "Context: C.\nQuestion: Q?\nAnswer: b", 1),
    "quail": ({"context": "C.", "question": "Q?", "answers": ["a", "b"], "correct_answer_id": 0},
              'Passage:\n\nC.\n\nQ: "Q?" Is the answer "a"?', 1),
    "social_i_qa": ({"context": "C.", "question": "Q?", "answerA": "a", "answerB": "b",
                     "answerC": "c", "label": "3"},
                    'Context:\nC.\n\nQuestion: "Q?"\n\nChoices:\na\nb\nc\n\nIs the answer "c"?', 1),
    "paws": ({"sentence1": "x", "sentence2": "y", "label": 1},
             "Sent 1: x\nSent 2: y\n\nQ: Are these sentences semantically equivalent?", 1),
    "mmlu": ({"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 3},
             "Q?\n\na\nb\nc\nd\n\nA: d.", 1),
    "amazon_polarity": ({"title": "T", "content": "body", "label": 1}, "T body", 1),
    "anli_r2": ({"premise": "P.", "hypothesis": "H.", "label": 0},
                "Premise: P.\nHypothesis: H.\n\nDoes the premise entail the hypothesis?", 1),
}


def test_table_covers_every_study_task():
    assert set(hub.HUB_TASKS) == {"boolq", "hellaswag", "sciq", "cola", "cosmos_qa", "quail",
                                  "social_i_qa", "paws", "mmlu", "sst2", "amazon_polarity",
                                  "anli_r2"}
    assert set(EXPECTED_ONE_ROW) == set(hub.HUB_TASKS)
    for source in hub.HUB_TASKS.values():
        assert source.revision in (None, hub.PARQUET_EXPORT)  # parquet only, no loading scripts
        assert source.train_splits and set(source.train_splits).isdisjoint(source.test_splits)


@pytest.mark.parametrize("name", sorted(EXPECTED_ONE_ROW))
def test_template(name):
    row, text, label = EXPECTED_ONE_ROW[name]
    assert hub.HUB_TASKS[name].format_fn(row, True, 0.0) == (text, label)


@pytest.mark.parametrize("name", sorted(MC))
def test_wrong_answer_is_uniform_over_the_others(name):
    row, text, _ = EXPECTED_ONE_ROW[name]
    shown = {hub.HUB_TASKS[name].format_fn(row, False, pick)[0]
             for pick in np.linspace(0, 0.999, 12)}
    assert text not in shown
    n_answers = {"hellaswag": 4, "sciq": 4, "cosmos_qa": 4, "quail": 2, "social_i_qa": 3,
                 "mmlu": 4}[name]
    assert len(shown) == n_answers - 1
    assert all(hub.HUB_TASKS[name].format_fn(row, False, 0.5)[1] == 0 for _ in range(2))


def test_cosmos_none_of_the_above_forces_label_0():
    row = {"context": "C", "question": "Q", "answer0": "x", "answer1": "y", "answer2": "z",
           "answer3": "None of the above choices .", "label": 3}
    for coin in (True, False):
        text, label = hub.format_cosmos_qa(row, coin, 0.4)
        assert label == 0 and "None of the above" not in text


def test_anli_binarisation():
    base = {"premise": "p", "hypothesis": "h"}
    assert [hub.format_anli({**base, "label": k}, True, 0)[1] for k in (0, 1, 2)] == [1, 0, 0]


@pytest.mark.parametrize("name", sorted(hub.HUB_TASKS))
def test_fixture_pipeline(name):
    splits = fixture_splits(name)
    train, test, info = hub.build_hub_task(name, splits, seed=3, n_test=40)
    for split in (train, test):
        assert len(split) > 10
        assert np.sum(split["label"] == 1) == np.sum(split["label"] == 0)  # balanced
        assert len(set(split["id"])) == len(split)  # dedup'd, unique ids
        assert [text_id(t) for t in split["text"][:5]] == list(split["id"][:5])
    assert len(test) <= 40
    assert not set(train["id"]) & set(test["id"])
    if name in MC:
        # label 1 shows the gold answer, label 0 a wrong one
        for text, label in zip(train["text"], train["label"]):
            assert ("GOLD" in _shown_answer(name, text)) == bool(label), text
        # before balancing, the coin shows gold about half the time
        assert info["train_stats"]["raw"] == (
            N_ROWS * len(hub.HUB_TASKS[name].train_splits) - (40 if hub.HUB_TASKS[name].pooled
                                                             else 0))
    # id stability: the same seed gives the same ids; the test set ignores the seed
    train2, test2, _ = hub.build_hub_task(name, splits, seed=3, n_test=40)
    assert list(train2["id"]) == list(train["id"]) and list(test2["id"]) == list(test["id"])
    train5, test5, _ = hub.build_hub_task(name, splits, seed=5, n_test=40)
    assert list(test5["id"]) == list(test["id"])
    assert list(train5["id"]) != list(train["id"])


def _shown_answer(name, text):
    """The answer a binarised text asks about."""
    if name == "sciq":
        return text.split(" A: ")[-1]
    if name == "mmlu":
        return text.split("\n\nA: ")[-1]
    if name == "cosmos_qa":
        return text.split("\nAnswer: ")[-1]
    return text.rsplit('"', 2)[-2]  # Is "{ans}" ... / Is the answer "{ans}"?


def test_coin_is_fair():
    """The seeded coin shows the gold answer about half the time, before balancing."""
    splits = fixture_splits("sciq", n=400)
    from scalable_elicitation.data import processing
    table = hub.as_arrow(splits["train"])
    split, _, _ = processing.process_rows(table, hub.format_sciq, seed=1)
    assert 0.4 < split["label"].mean() < 0.6


def test_schema_mismatch_names_the_column():
    bad = fixture("boolq").rename_column("passage", "context")
    with pytest.raises(ValueError, match="google/boolq.*missing column 'passage'"):
        hub.build_hub_task("boolq", {"train": bad, "validation": bad}, seed=0, n_test=10)


def test_unknown_hub_task():
    with pytest.raises(ValueError, match="unknown hub task 'nope'.*boolq"):
        hub.get_source("nope")


@pytest.mark.network
@pytest.mark.parametrize("name", sorted(hub.HUB_TASKS))
def test_load_real_hub_task(name):
    if os.environ.get("HF_HUB_OFFLINE", "0") == "1":
        pytest.skip("offline (HF_HUB_OFFLINE=1): run with HF_HUB_OFFLINE=0 "
                    "HF_DATASETS_OFFLINE=0 pytest -m network")
    train, test, info = hub.load_hub_task(name, seed=0, n_test=1000, max_train=2000)
    assert 0 < len(test) <= 1000 and 0 < len(train) <= 2000
    for split in (train, test):
        assert np.mean(split["label"]) == 0.5

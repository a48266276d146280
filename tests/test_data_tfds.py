"""tfds: tasks on `tfds.testing.mock_data` (no download); skipped where a builder needs
TensorFlow, which the `tfds` extra does not install."""
import numpy as np
import pytest

from scalable_elicitation.data import load_task, tfds_tasks

tfds = pytest.importorskip("tensorflow_datasets", reason="the optional tfds extra is not installed")


@pytest.mark.parametrize("builder", sorted(tfds_tasks.TFDS_TASKS))
def test_mock_tfds_task(builder):
    source = tfds_tasks.TFDS_TASKS[builder]
    try:
        with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
            task = load_task(f"tfds:{builder}", seed=0, n_test=20)
            again = load_task(f"tfds:{builder}", seed=0, n_test=20)
    except ImportError as e:
        if "tensorflow" in str(e):
            pytest.skip(f"tfds builder {builder} needs TensorFlow, not installed: {e}")
        raise
    assert task.info["test_splits"] == [source.test_split]
    for split in (task.train, task.test):
        assert len(split) >= 2 and np.mean(split["label"]) == 0.5
        assert len(set(split["id"])) == len(split)
    assert list(task.train["id"]) == list(again.train["id"])


def test_boolq_mapping_uses_the_boolq_template():
    row = {"question": "q?", "passage": "P.", "label": 1}
    assert tfds_tasks.TFDS_TASKS["super_glue/boolq"].format_fn(row, True, 0.0) == (
        "Passage: P.\nQuestion: q?", 1)


def test_rows_to_table_decodes_numpy_and_bytes():
    rows = [{"text": b"caf\xc3\xa9", "label": np.array(1)}]
    assert tfds_tasks.rows_to_table(rows, ("text", "label")).to_pylist() == [
        {"text": "café", "label": 1}]


def test_unmapped_builder():
    with pytest.raises(ValueError, match="no text/label mapping.*imdb_reviews"):
        tfds_tasks.get_tfds_source("mnist")

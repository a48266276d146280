"""Tasks, splits and label pools: everything a run reads about its data
(docs/design.md#data-and-pools)."""
from scalable_elicitation.data.pools import PoolExhaustedError, Pools, make_pools
from scalable_elicitation.data.registry import DEFAULT_TASK, Task, load_task, task_kind
from scalable_elicitation.data.split import Split, concat_splits, text_id

__all__ = ["DEFAULT_TASK", "PoolExhaustedError", "Pools", "Split", "Task", "concat_splits",
           "load_task", "make_pools", "task_kind", "text_id"]

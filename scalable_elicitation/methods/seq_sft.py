"""Sequential SFT (docs/design.md#seq_sft): a stage on the weak labels, then one on the oracle
labels. An empty stage is skipped, so all-weak and all-oracle are its endpoints; +log-conf and
+uncertainty are its options `loss` and `oracle_selection`."""
from scalable_elicitation.methods.base import Method


class SeqSFT(Method):
    name = "seq_sft"

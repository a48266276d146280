"""The project imports transformers for tokenizers and configs only: its "PyTorch was not found"
advice is silenced at that import and nowhere else."""
import os
import subprocess
import sys

SNIPPET = """
import os, sys
from scalable_elicitation.models import byte_tokenizer
byte_tokenizer()
assert "transformers" in sys.modules
assert "TRANSFORMERS_NO_ADVISORY_WARNINGS" not in os.environ, "the switch leaked"
from transformers.utils import logging
logging.get_logger("transformers").warning_advice("advice after the import still shows")
"""


def test_the_tokenizer_import_is_quiet_and_later_advice_is_not():
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}
    out = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "PyTorch was not found" not in out.stderr + out.stdout
    assert "advice after the import still shows" in out.stderr

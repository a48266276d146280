r"""Elicitation methods on the cost grid (docs/design.md#methods): seq_sft and its +log-conf and
+uncertainty variants, k-shot-prompted SFT, in-context learning, mixture SFT.

  python -m scalable_elicitation.main --config=configs/methods.py --workdir=w_methods
  python -m scalable_elicitation.main --config=configs/methods.py:smoke --workdir=/tmp/m

The default crosses seq_sft, kshot_sft (k=2, weak shots) and icl (k=2) on the embedded offline
task over budgets 8, 64 and 256, fractions 0, 0.5 and 1, three seeds; `variants=all` adds
logconf, entropy selection and mixture SFT. The few-shot prompt's effect (issue 23;
`report/prompt_effect.csv`, k-shot minus seq_sft with paired 90% intervals) on its own:

  python -m scalable_elicitation.main --config=configs/methods.py:variants=seq_sft+kshot_sft \
      --workdir=w_prompt

A seed's k-shot runs share their shots (the first k of its weak pool) and prompts, so their
prompted features are computed once per seed, each shot order's prefix encoded once (README,
"The few-shot prompt's effect").
"""
from configs import cost_sweep
from configs.common import parse_arg

VARIANTS = {
    "seq_sft": {"method": "seq_sft"},
    "kshot_sft": {"method": "kshot_sft", "k": 2, "shot_source": "weak"},
    "icl": {"method": "icl", "k": 2},
    "logconf": {"method": "seq_sft", "loss": "logconf"},
    "entropy": {"method": "seq_sft", "oracle_selection": "entropy"},
    "mixture_sft": {"method": "mixture_sft"},
}


def get_config(arg=None):
    opts = parse_arg(arg, smoke=False, variants="seq_sft+kshot_sft+icl")  # variants: all|A+B
    c = cost_sweep.get_config("smoke" if opts.smoke else None)
    with c.unlocked():
        c.variants = opts.variants
    if not opts.smoke:
        c.budgets = (8, 64, 256)
        c.fractions = ("0", "0.5", "1")
        c.seeds = 3  # the prompt's effect is a paired difference: seeds are what settle it
        c.n_test = 300
        c.max_length = 48
        c.shot_max_length = 48
        # fine buckets for short inputs (plain tweets and a prompt's own tokens after its
        # encoded prefix): with (64, 160) every tweet (about 30 tokens) padded to 64
        c.length_buckets = (16, 24, 32, 48, 64, 160)
    else:
        c.budgets = (8,)
        c.length_buckets = (32, 128)
        c.shot_max_length = 32
    return c


def sweep(add, config):
    names = list(VARIANTS) if config.variants == "all" else config.variants.split("+")
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise ValueError(f"config.variants: unknown {sorted(unknown)}; allowed: {list(VARIANTS)}")
    points = []
    cost_sweep.sweep(lambda **kw: points.append(kw), config)
    for name in names:
        for p in points:
            add(**p, **VARIANTS[name])

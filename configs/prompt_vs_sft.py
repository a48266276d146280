r"""The study's prompting-versus-finetuning grid: k-shot prompts (k in 2, 8, 32; weak or oracle
shots) against SFT on n in 16, 64, 256, 1024, 4096 labels (weak or oracle), at each n also the
k-shot-prompted SFT. Budgets here are label counts of one source (prices 1 and 1).

  python -m scalable_elicitation.main --config=configs/prompt_vs_sft.py:lora --workdir=w_pvs
  python -m scalable_elicitation.main --config=configs/prompt_vs_sft.py:smoke --workdir=/tmp/p
"""
from configs import cost_sweep
from configs.common import parse_arg

KS = (2, 8, 32)
SHOT_TYPES = ("weak", "oracle")
SIZES = (16, 64, 256, 1024, 4096)
SFT_TYPES = ("weak", "oracle")


def get_config(arg=None):
    smoke = parse_arg(arg, **cost_sweep.PRESETS).smoke  # the presets are cost_sweep's
    c = cost_sweep.get_config(arg)
    c.prices.oracle = "1"
    c.prices.weak = "1"
    c.length_buckets = tuple(sorted(set(c.length_buckets) | {512, 2048}))
    with c.unlocked():
        c.sizes = (16, 64) if smoke else SIZES
        c.ks = (2,) if smoke else KS
    return c


def sweep(add, config):
    for seed in range(config.seeds):
        for k in config.ks:
            for shots in SHOT_TYPES:  # prompting alone: k bought shots, no training
                fraction = "1" if shots == "oracle" else "0"
                add(budget=k, fraction=fraction, seed=seed, method="icl", k=k)
        for n in config.sizes:
            for sft in SFT_TYPES:
                fraction = "1" if sft == "oracle" else "0"
                add(budget=n, fraction=fraction, seed=seed, method="seq_sft")
                for k in config.ks:
                    for shots in SHOT_TYPES:
                        if shots != sft:
                            continue  # shots come out of the same bought labels
                        add(budget=n + k, fraction=fraction, seed=seed, method="kshot_sft",
                            k=k, shot_source=shots)

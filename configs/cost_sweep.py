r"""Cost sweep: budgets x oracle spending fractions x seeds, sequential SFT
(docs/design.md#cost-model, #stages).

The embedded offline default (2 CPU cores, about 10 minutes): SmolLM2-135M-Instruct as the
strong model, trained as a linear probe on cached mean-pooled features; weak labels from a
MiniLM probe trained on 16 ground-truth tweets (excluded from the pools); the crowd-labelled
tweet sentiment task (crowd confidence >= 0.9), weak price 1/10. Run it with:

  python -m scalable_elicitation.main --config=configs/cost_sweep.py --workdir=workdir

Presets go after the colon as comma-separated key=value pairs and bare flags:

  --config=configs/cost_sweep.py:smoke                       # tiny random model, < 1 minute
  --config=configs/cost_sweep.py:model=smollm2,task=tweet_sentiment,lora   # LoRA finetuning
  --config=configs/cost_sweep.py:study                       # the study's grid and schedule
  --config=configs/cost_sweep.py:capacity                    # labeller: bag of words, 400 labels

Every other knob is an override: --config.train.lr=1e-3 --config.prices.weak=0.01
"""
import ml_collections

from configs.common import parse_arg
from scalable_elicitation import budget as budget_lib

MODELS = {"smollm2": "smollm2", "minilm": "minilm", "tiny": "tiny:llama"}
PRESETS = {"model": "", "task": "", "smoke": False, "lora": False, "study": False,
           "capacity": False}
# `capacity`: a labeller weak by capacity more than by data, as the study's (a small model
# trained on plenty of ground truth): a hashed bag-of-words logistic regression on 400
# ground-truth texts (excluded from the pools; `labelers.words`). (The MiniLM probe on 400
# texts is no weak labeller: 0.852 on the tweets against the student's ceiling of 0.864.)
CAPACITY_LABELER_N = 400
STUDY_LORA_LR = 5e-4  # the study's LoRA rate for ~0.5B models (Qwen1.5-0.5B); 8e-5 for 8B


def get_config(arg=None):
    opts = parse_arg(arg, **PRESETS)
    c = ml_collections.ConfigDict()
    c.task = "tweet_sentiment"
    # None: the task's own default (tweet_sentiment keeps crowd confidence >= 0.9); options a
    # task does not take must stay None.
    c.task_options = ml_collections.ConfigDict({
        "min_confidence": ml_collections.config_dict.placeholder(float),
        "max_train": ml_collections.config_dict.placeholder(int)})
    c.n_test = 1000  # test-set noise of a mean accuracy ~0.014 (binomial), as the study's
    # the seed of the task's one balanced training split: fixed like the test set, so every
    # run seed draws its pools and labeller examples from the same texts (and their features)
    c.split_seed = 0
    c.model = "smollm2"
    c.trainable = "head"  # linear probe on cached features: the CPU default (see README)
    # "" keeps the family's pooling (last token for decoders, as the study's head). The CPU
    # probe mean-pools: on frozen SmolLM2 features it scored 0.80 vs 0.76 at 1,024 labels.
    c.pooling = "mean"
    # auto: float32 on CPU (measured faster there than bfloat16), bfloat16 weights and compute
    # on GPU/TPU (float32 kept for trainable weights, optimizer state, norms' statistics,
    # softmax, LoRA products and the loss); resolved when the sweep starts, so records and
    # run ids carry the dtype used
    c.dtype = "auto"
    c.lora = ml_collections.ConfigDict({"rank": 8, "alpha": 8.0, "dropout": 0.0})
    c.max_length = 64
    # fine buckets for short tweets: feature extraction, the default's main cost, ran 1.7x faster
    # with six buckets from 16 to 64 than with (32, 64) (one compile per bucket)
    c.length_buckets = (16, 24, 32, 48, 64)
    c.remat = False
    # auto: jax.nn.dot_product_attention (cuDNN's fused kernel where it applies) on GPU/TPU
    # (a TPU step at sequences of whole 128-blocks: Pallas' flash kernel, layers.attention),
    # our einsum attention on CPU; einsum | fused force one. Equal within float tolerance,
    # so not part of run ids
    c.attention = "auto"
    c.method = "seq_sft"  # seq_sft | kshot_sft | icl | mixture_sft
    c.loss = "xent"  # xent | logconf (weak stage)
    c.oracle_selection = "random"  # random | entropy (uncertainty sampling)
    c.selection_temperature = 0.0  # 0: top entropy; T > 0: sample with p ~ H^(1/T)
    c.schedule = "default"  # default | api (no validation, the API batch/epoch rule)
    c.k = 2  # shots for kshot_sft / icl
    c.shot_source = "weak"  # weak | oracle (kshot_sft)
    c.shot_max_length = 64  # tokens per shot's text; shots are never cut away
    c.mixture = ml_collections.ConfigDict({"weak_weight": 1.0, "oracle_weight": 1.0})
    # a quarter of the pool for oracle labels: the default's all-oracle points need at most
    # 256, while all-weak at weak price 1/10 needs 10x the budget (the study: halves;
    # docs/decisions.md#a-quarter-of-each-pool-for-oracle-labels)
    c.oracle_share = 0.25
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.checkpoint = True  # Orbax checkpoints at evaluations, so a killed run resumes exactly
    # runs trained together (docs/design.md#many-runs-at-once): 0 = as many as fit the device,
    # 1 = one at a time
    c.parallel_runs = 0
    # where a group trains on a multi-device mesh: "rows" splits each run's batch over the
    # data axis as one run alone does; "runs" puts whole runs on devices (model on one device);
    # "auto" whole runs when the group has a run per device and mesh fsdp = tensor = 1
    c.group_sharding = "auto"
    c.checkpoint_interval_s = 60.0  # at most one mid-stage save per interval (0: every check)
    # training steps between the host's checks of a stage (losses, progress, checkpoints): the
    # step loop stays on the device in between. Placement, like parallel_runs: not in run ids.
    c.host_poll_steps = 512
    c.tensorboard = True  # per-step losses and per-run metrics in WORKDIR/tb (as launch.sweep)
    # auto | cpu | gpu | tpu: a run asked for a GPU or TPU refuses to start on another backend
    # (launch/gpu_slurm.sbatch and launch/tpu_vm.sh ask); placement only, not in run ids
    c.platform = "auto"

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32
    # rows per device in one forward and backward pass; a step sums the gradients of its
    # passes (0: the whole batch in one pass). Memory against passes: an 8B model at 512
    # tokens needs small micro-batches (docs/design.md#stages). Not in run ids.
    c.train.micro_batch = 0
    c.train.lr = 0.01  # probe lr, from scripts/probe_lr_sweep.py: README "Choosing the defaults"
    c.train.max_visits = 30000  # the study's example-visit cap per stage
    c.train.small_stage_visits = 3000
    c.train.eval_every = 50
    c.train.patience = 4
    c.train.min_delta = 0.01
    # Small stages, where the study's rules measure the training rule instead of the label mix
    # (README "Small stages", docs): no evaluation before 1,600 visits (50 steps of 32, when a
    # large stage first evaluates), so 5-8 validation labels cannot stop a stage, or keep its
    # state, by chance; and a stage too small for a carve-out (< 10 labels) after a stage that
    # had one validates on that carve-out, keeping the state it entered with unless beaten.
    # `min_eval_visits=0` and `small_stage_val="none"` are the study's rules.
    c.train.min_eval_visits = 1600
    c.train.small_stage_val = "previous"  # previous | none

    c.labeler = ml_collections.ConfigDict()
    c.labeler.kind = "model"  # model | noise | file | words (bag of words, `:capacity`)
    c.labeler.source = "minilm"
    c.labeler.n_train = 16
    c.labeler.trainable = "head"
    c.labeler.lr = 0.003  # calibrated soft labels (ECE ~0.06), see README "Choosing the defaults"
    c.labeler.epochs = 20.0  # the study's 3 epochs on 16 labels are 3 steps; see README
    c.labeler.batch_size = 32
    c.labeler.micro_batch = 0  # as train.micro_batch
    c.labeler.max_length = 64
    c.labeler.rate = 0.3  # used when kind = noise
    c.labeler.soft = False

    # -- Learning through weak labels (docs/decisions.md#a-student-that-learns-through-noisy-
    # labels). All run-defining (in run ids, `planning.effective`) except `ceiling`.
    # weak_fit.kind: "cv_l2" (a probe's weak stage is L2-regularised logistic regression solved
    # to its optimum, the penalty C chosen by `folds`-fold CV against the purchased weak labels,
    # `scalable_elicitation.weak_fit`) | "engine" (AdamW with early stopping on the weak
    # carve-out, as every finetuned stage; LoRA and full finetuning always train so)
    # cs: scikit-learn's C (sum of log-losses + ||w||^2 / 2C); hard: fit the weak labels
    # thresholded at 0.5 (soft targets taught the probe the labeller's own confidence: PGR 0.14
    # against 0.21 hard, 5 seeds offline)
    c.weak_fit = ml_collections.ConfigDict({
        "kind": "cv_l2", "cs": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1), "folds": 5,
        "hard": True})
    # weak_truth: the weak stage trains on the ground truth of the texts it bought (a ceiling
    # run); set per grid point by `ceiling`, not by hand
    c.weak_truth = False
    # ceiling: add, for every all-weak point, a ceiling run of the same seed and texts, so the
    # report measures weak-to-strong (PGR). Which runs exist, not what a run computes: not in
    # run ids. Ceiling runs never enter the cost-accuracy analysis.
    c.ceiling = True

    c.prices = ml_collections.ConfigDict({"oracle": "1", "weak": "0.1"})
    # every point fits the pools (about 2,400 weak and 800 oracle tweets) but all-weak at 256
    # (2,560 weak labels): 1 of 25 points infeasible. No 16: its all-oracle runs early-stop on
    # 3 validation labels and kept the initial state in 1 of 3 seeds under the study's rules
    # (docs/decisions.md#budgets-and-fractions)
    c.budgets = (8, 32, 64, 128, 256)
    c.fractions = ("0", "0.2", "0.5", "0.8", "1")
    c.seeds = 5
    c.seed_offset = 0
    c.seed_rule = "fixed"  # fixed: `seeds` per point; study: 3, or 7 for tiny stages

    # Settle (docs/design.md#settle): after the grid's seeds, while a budget's chosen
    # configuration may lie more than `settle` below the best measured there (simultaneous 90%
    # regret bound), the main job adds seeds to that budget's contenders (new seed ids, ordinary
    # records) up to `max_seeds` each, and stops early where only test-set noise is left.
    # 0.02 = analysis.tolerance: settle until the printed answer is a set of good buys. A seed
    # of a probe run costs about a second on 2 cores once features are cached. 0 turns it off.
    c.settle = 0.02
    c.max_seeds = 20
    # the analysis (and the printed answer): a good buy is a configuration whose regret bound is
    # at most `tolerance` (0.02: about one run's test-set noise at n_test=1000)
    c.analysis = ml_collections.ConfigDict({"tolerance": 0.02})

    if opts.model:
        c.model = MODELS.get(opts.model, opts.model)
    if opts.task:
        c.task = opts.task
    if opts.lora:  # LoRA finetuning at the study's rate for ~0.5B models
        c.trainable = "lora"
        c.pooling = ""
        c.train.lr = STUDY_LORA_LR
        c.train.max_visits = 1024
    if opts.capacity:
        c.labeler.kind, c.labeler.n_train = "words", CAPACITY_LABELER_N
    if opts.study:  # the study's protocol (docs/decisions.md); pinned by a test
        c.budgets = (8, 16, 64, 256, 512, 1024, 4096, 8192)
        c.fractions = ("0", "0.05", "0.2", "0.4", "0.6", "0.8", "0.95", "1")
        c.seed_rule = "study"
        c.n_test = 1000
        c.trainable = "lora"
        c.pooling = ""
        c.lora.rank, c.lora.alpha, c.lora.dropout = 8, 8.0, 0.0
        c.train.lr = STUDY_LORA_LR
        c.train.batch_size = 32
        c.train.micro_batch = 1  # the study's: 32 passes of one sequence, gradients summed
        # the base sharded over every device (FSDP): an 8B model's bfloat16 weights (15 GiB)
        # replicated do not fit a v5e chip's 15.75 GiB (docs/preflight.md)
        c.mesh.data, c.mesh.fsdp = 1, -1
        c.train.max_visits = 30000
        c.train.eval_every = 50
        c.train.patience = 4
        c.train.min_delta = 0.01
        c.oracle_share = 0.5
        c.prices.oracle, c.prices.weak = "1", "0.1"
        # the weak model: finetuned with LoRA on ground truth, 3 epochs, batch 32
        c.labeler.trainable = "lora"
        c.labeler.lr = STUDY_LORA_LR
        c.labeler.epochs = 3.0
        c.labeler.batch_size = 32
        c.labeler.micro_batch = 1
    if opts.smoke:
        c.settle = 0.0  # one seed: nothing to settle on
        c.model = "tiny:llama"
        c.trainable = "lora"
        c.pooling = ""
        c.task_options.max_train = 160
        c.n_test = 32
        c.max_length = 32
        c.length_buckets = (32,)
        c.train.lr = 3e-3
        c.train.max_visits = 64
        c.train.small_stage_visits = 32
        c.train.min_eval_visits = 32  # of a 64-visit cap: evaluations (and saves) mid-stage
        c.train.eval_every = 1
        c.labeler.kind = "noise"
        c.seeds = 1
        c.budgets = (2, 8)
        c.fractions = ("0", "0.5", "1")
    return c


def sweep(add, config):
    """One grid point per (budget, fraction, seed); runs buying equal counts are merged later."""
    prices = budget_lib.Prices.of(config.prices.oracle, config.prices.weak)
    for b in config.budgets:
        for f in config.fractions:
            point = budget_lib.labels_for(b, f, prices)
            if config.seed_rule == "study":
                seeds = budget_lib.study_seeds()(point.n_weak, point.n_oracle)
            else:
                seeds = range(config.seeds)
            for s in seeds:
                add(budget=b, fraction=f, seed=config.seed_offset + s)
                if config.get("ceiling", False) and point.n_oracle == 0 and point.n_weak > 0:
                    add(budget=b, fraction=f, seed=config.seed_offset + s, weak_truth=True)

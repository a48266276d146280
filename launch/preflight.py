r"""Compile a sweep's programs for an accelerator before renting it (docs/preflight.md).

  python -m launch.preflight --config=configs/cost_sweep.py:study \
      --config.model=meta-llama/Meta-Llama-3-8B --target=v5p-8 --out=v5p.json

On a CPU-only machine with the target's extra installed (`tpu`: libtpu; `gpu`: the cuda12
plugin, run with JAX_PLATFORMS=cpu), this builds the programs the sweep would run for the
config, with abstract weights (`jax.ShapeDtypeStruct`s carrying the shardings the real load
gives them: no download, no data) on a mesh that the project's own mesh code makes from the
target's compile-only devices, and compiles them for the target:

- `train_loop`: the group loop (`groups.group_loop`: a vmapped train step of every member,
  their validation) at the group size the scheduler would choose;
- `eval`: the test-set scoring step; `features`: a probe's pooled features forward;
- `labeler_loop`: the weak labeller's stage, when the labeller is a model;
- `icl_prefix`, `icl_scores`: in-context scoring (a prompt prefix's KV cache; a batch scored
  after the stacked prompts), when any run is in-context.

Per program it prints and writes (`--out`) the compiler's bytes per device, the device's
memory, whether it fits, the largest group that fits (found by compiling), FLOPs per step
(counted from the compiled program's dots, loop bodies times their trip counts), a roofline
lower bound on the step time and the model-FLOP-utilisation ceiling it implies (ceilings,
not predictions), the collectives per step with their bytes, and the attention kernel found.

Exit 0: every program fits. Exit 3: one line per program that does not, with the shortfall
and a setting that fits. Exit 2: bad flags, or a target this JAX cannot compile for (the line
names the extra to install). Nothing is written but `--out`: no records, no workdir.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only devices; never a local backend
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import targets as targets_lib  # noqa: E402
from scalable_elicitation import aot  # noqa: E402

FLAGS = flags.FLAGS
_CONFIG = _TARGET = _OUT = _SEARCH = None


def define_flags() -> None:
    """The command line's flags, defined when it runs (not on import: the main job defines
    --config too, and a test process imports both)."""
    global _CONFIG, _TARGET, _OUT, _SEARCH
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].",
                                              lock_config=True)
    _TARGET = flags.DEFINE_string("target", None, "Accelerator target: " + ", ".join(
        targets_lib.TARGETS) + ".")
    _OUT = flags.DEFINE_string("out", None, "Write the table as JSON here.")
    _SEARCH = flags.DEFINE_bool("search", True, "Find each grouped program's largest fitting "
                                "group by compiling (a few more compiles).")

GIB = 1 << 30
NO_WORKDIR = "/nonexistent/preflight"  # a planner needs a path; nothing is ever written there


# ---------------------------------------------------------------------------------------------
# Reading a compiled program
_SHAPE = re.compile(r"(pred|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64|c64|f8e4m3fn|"
                    r"f8e5m2)\[([0-9,]*)\]")
_ITEM = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4, "s64": 8,
         "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "f8e4m3fn": 1,
         "f8e5m2": 1}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
               "collective-permute")


def _dims(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d]


def _bytes(type_text: str) -> int:
    """Bytes of an HLO result type (a shape or a tuple of shapes)."""
    return sum(_ITEM[t] * math.prod(_dims(d)) for t, d in _SHAPE.findall(type_text))


def _computations(hlo: str) -> dict[str, list[str]]:
    comps, name = {}, None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if m and not line.startswith(" "):
            name = m.group(1)
            comps[name] = []
            if line.startswith("ENTRY"):
                comps["__entry__"] = comps[name]
        elif name is not None and line.startswith(" "):
            comps[name].append(line)
    return comps



def _op_flops(line: str, shapes: dict) -> float:
    """FLOPs of a dot or convolution instruction (2 x output elements x contracted size);
    `shapes` maps the computation's value names to their types (operands are printed by
    name only)."""
    m = re.search(r"= (\w+)\[([0-9,]*)\][^ ]* (dot|convolution)\(([^)]*)\)", line)
    if not m:
        return 0.0
    out = math.prod(_dims(m.group(2)))
    operands = []
    for ref in m.group(4).split(","):
        ref = ref.strip()
        inline = _SHAPE.search(ref)  # older HLO text prints operand types inline
        name = ref.split()[-1].lstrip("%") if ref else ""
        found = inline or _SHAPE.search(shapes.get(name, ""))
        operands.append(_dims(found.group(2)) if found else None)
    if len(operands) < 2 or operands[0] is None or operands[1] is None:
        return 0.0
    lhs, rhs = operands[0], operands[1]
    if m.group(3) == "dot":
        c = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", line)
        k = math.prod(lhs[i] for i in _dims(c.group(1))) if c else 1
        return 2.0 * out * k
    # a convolution, as XLA:TPU writes most dots (batch and head dimensions become window
    # dimensions over padded or dilated inputs): per output element, the kernel's input
    # features times the window taps that land on real input, per window dimension
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", line)
    if not labels:
        return 0.0
    lhs_l, rhs_l = labels.group(1), labels.group(2)
    window = re.search(r"window=\{size=([0-9x]+)", line)
    sizes = [int(v) for v in window.group(1).split("x")] if window else []
    dilate = re.search(r"lhs_dilate=([0-9x]+)", line)
    dilation = [int(v) for v in dilate.group(1).split("x")] if dilate else [1] * len(sizes)
    taps = 1
    for k, size in enumerate(sizes):
        length = lhs[lhs_l.index(str(k))] if str(k) in lhs_l else 1
        taps *= min(-(-size // dilation[k]), length)
    return 2.0 * out * rhs[rhs_l.index("i")] * taps


@dataclasses.dataclass
class Census:
    flops: float = 0.0
    # channel (one collective, which XLA:TPU may split over several fusions) -> [kind, count,
    # bytes]; `collectives` sums them by kind
    channels: dict = dataclasses.field(default_factory=dict)
    by_op: dict = dataclasses.field(default_factory=dict)  # JAX op name -> FLOPs
    custom_calls: set = dataclasses.field(default_factory=set)
    # loops whose trip count could not be read, counted once. In the entry computation that
    # is the group loop's `while` over steps (`step_loops`: what makes the figures per step);
    # anywhere else (`unread_loops`) the FLOPs and collectives are not the step's.
    step_loops: list = dataclasses.field(default_factory=list)
    unread_loops: list = dataclasses.field(default_factory=list)

    @property
    def collectives(self) -> dict:
        out: dict = {}
        for kind, n, b in self.channels.values():
            entry = out.setdefault(kind, [0, 0])
            entry[0] += n
            entry[1] += b
        return out

    @property
    def reliable(self) -> bool:
        """Whether every loop inside a step had a trip count the census could read."""
        return not self.unread_loops


def census(hlo: str, skip_conditionals: bool = True) -> Census:
    """FLOPs and collectives of one run of the entry computation, each loop body counted its
    trip count times (XLA's cost analysis counts a body once). A loop in the entry computation
    whose trip count is not known (the group loop's `while` over steps) counts once: per step;
    one elsewhere counts once too, and is named in `unread_loops`. Conditionals (evaluations
    when due, skipped empty micro-batches of a lone run) are left out with
    `skip_conditionals`. Collectives are counted per channel, their bytes the result's (an
    async collective's `-done`)."""
    comps = _computations(hlo)
    memo: dict[str, Census] = {}

    def walk(name: str, depth=0) -> Census:
        if name in memo:
            return memo[name]
        c = Census()
        lines = comps.get(name, [])
        insts = _instructions(lines)
        shapes = {k: i.type for k, i in insts.items()}
        started = {}  # an async collective's -start instruction -> its channel key
        for line in lines:
            inst = _instruction(line)
            f = _op_flops(line, shapes)
            if f:
                c.flops += f
                op = re.search(r'op_name="([^"]+)"', line)
                key = op.group(1) if op else "?"
                c.by_op[key] = c.by_op.get(key, 0.0) + f
            for kind in COLLECTIVES:
                if inst is not None and inst.op in (kind, kind + "-start"):
                    channel = re.search(r"channel_id=(\d+)", line)
                    key = channel.group(1) if channel else f"{name}:{inst.name}"
                    c.channels.setdefault(key, [kind, 1, _bytes(inst.type)])
                    started[inst.name] = key
                elif inst is not None and inst.op == kind + "-done" and inst.operands:
                    # the -start's type holds the operands and context words as well; the
                    # -done's is what the collective delivers
                    key = started.get(inst.operands[0])
                    if key in c.channels:
                        c.channels[key][2] = _bytes(inst.type)
            cc = re.search(r'custom_call_target="([^"]+)"', line)
            if cc:
                c.custom_calls.add(cc.group(1))
            times, callees = 1, []
            if inst is not None and inst.op == "while":
                body = re.search(r"body=%?([\w.\-]+)", line)
                cond = re.search(r"condition=%?([\w.\-]+)", line)
                trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                times = int(trip.group(1)) if trip else _trip_count(
                    comps.get(cond.group(1), []) if cond else [],
                    comps.get(body.group(1), []) if body else [], insts, inst)
                if times is None:
                    times = 1
                    (c.step_loops if name == "__entry__" else c.unread_loops).append(inst.name)
                callees = [body.group(1)] if body else []
            elif re.search(r"\sconditional\(", line):
                if skip_conditionals:
                    continue
                callees = re.findall(r"(?:branch_computations=\{|true_computation=|"
                                     r"false_computation=)%?([\w.\-]+)", line)
            else:
                callees = re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", line)
            for callee in callees:
                if callee == name or depth > 50:
                    continue
                sub = walk(callee, depth + 1)
                c.flops += times * sub.flops
                for key, f in sub.by_op.items():
                    c.by_op[key] = c.by_op.get(key, 0.0) + times * f
                c.custom_calls |= sub.custom_calls
                c.unread_loops += sub.step_loops + sub.unread_loops
                for key, (kind, n, b) in sub.channels.items():
                    c.channels.setdefault(key, [kind, times * n, times * b])
        memo[name] = c
        return c

    return walk("__entry__")


# ---------------------------------------------------------------------------------------------
# Loop trip counts. XLA:TPU prints no `known_trip_count`; a loop's count is read from its
# condition (`counter < N`, or <=, >, >=, !=, against a constant), the step its body adds to
# the counter, and the counter's initial value in the loop's operand tuple: a scan counts
# 0, 1, ... N-1 in s32; a collective matmul (an all-gather XLA:TPU decomposes into a ring of
# collective-permutes, each step's shard multiplied as it arrives) counts in u32 and may
# advance by 2 (two ring directions, or a body unrolled twice).
@dataclasses.dataclass
class _Inst:
    name: str
    type: str
    op: str
    operands: list
    attributes: str


def _close(text: str, i: int) -> int:
    """Index of the parenthesis closing the one at `text[i]`."""
    depth = 0
    for j in range(i, len(text)):
        depth += {"(": 1, ")": -1}.get(text[j], 0)
        if depth == 0:
            return j
    return len(text) - 1


def _instruction(line: str) -> _Inst | None:
    """One HLO instruction line, parsed: `%name = TYPE opcode(operands), attributes`."""
    m = re.match(r"^\s*(?:ROOT )?%?([\w.\-]+) = ", line)
    if not m:
        return None
    rest = line[m.end():]
    if rest.startswith("("):  # a tuple type, with spaces and comments inside
        end = _close(rest, 0)
        type_text, rest = rest[:end + 1], rest[end + 1:].lstrip()
    else:
        type_text, _, rest = rest.partition(" ")
    op = re.match(r"([\w\-]+)\(", rest)
    if not op:
        return None
    end = _close(rest, op.end() - 1)
    operands, depth, part = [], 0, ""
    for ch in re.sub(r"/\*.*?\*/", "", rest[op.end():end]) + ",":
        depth += {"(": 1, "{": 1, "[": 1, ")": -1, "}": -1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            if part.strip():  # older HLO prints an operand's type before its name
                operands.append(part.split()[-1].lstrip("%"))
            part = ""
        else:
            part += ch
    return _Inst(m.group(1), type_text, op.group(1), operands, rest[end + 1:])


def _instructions(lines: list[str]) -> dict[str, _Inst]:
    out = {}
    for line in lines:
        inst = _instruction(line)
        if inst is not None:
            out[inst.name] = inst
            if line.lstrip().startswith("ROOT "):
                out["__root__"] = inst
    return out


def _source(insts: dict, name: str) -> _Inst | None:
    """The instruction that defines `name`'s value, through copies, bitcasts, conversions
    and async copies."""
    for _ in range(32):
        inst = insts.get(name)
        if inst is None or not inst.operands:
            return inst
        if inst.op in ("copy", "bitcast", "convert", "reshape"):
            name = inst.operands[0]
        elif inst.op == "copy-done":
            start = insts.get(inst.operands[0])
            if start is None or not start.operands:
                return inst
            name = start.operands[0]
        else:
            return inst
    return None


def _int_constant(insts: dict, name: str) -> int | None:
    inst = _source(insts, name)
    if inst is None or inst.op != "constant" or not re.match(r"[su]\d+\[\]", inst.type):
        return None
    try:
        return int(inst.operands[0])
    except (IndexError, ValueError):
        return None


def _tuple_index(insts: dict, name: str) -> int | None:
    """k when `name` is element k of the computation's parameter (a loop's state tuple)."""
    inst = _source(insts, name)
    if inst is None or inst.op != "get-tuple-element":
        return None
    param = _source(insts, inst.operands[0])
    index = re.search(r"index=(\d+)", inst.attributes)
    return int(index.group(1)) if param is not None and param.op == "parameter" and index \
        else None


_FLIP = {"LT": "GT", "GT": "LT", "LE": "GE", "GE": "LE", "NE": "NE"}


def _trip_count(condition: list[str], body: list[str], caller: dict,
                loop: _Inst) -> int | None:
    """A counted loop's trip count (see above); None when the loop is not one whose count can
    be read (the group loop's `while` over steps compares two values it carries)."""
    cond, step_insts = _instructions(condition), _instructions(body)
    root = cond.get("__root__")
    if root is None or root.op != "compare" or len(root.operands) != 2:
        return None
    direction = re.search(r"direction=(\w+)", root.attributes)
    direction = direction.group(1) if direction else ""
    a, b = root.operands
    k, limit = _tuple_index(cond, a), _int_constant(cond, b)
    if k is None or limit is None:  # `N > counter`
        k, limit, direction = _tuple_index(cond, b), _int_constant(cond, a), \
            _FLIP.get(direction, "")
    if k is None or limit is None:
        return None
    # the body's new counter: the old one plus (or minus) a constant
    out = step_insts.get("__root__")
    if out is None or out.op != "tuple" or k >= len(out.operands):
        return None
    update = _source(step_insts, out.operands[k])
    if update is None or update.op not in ("add", "subtract") or len(update.operands) != 2:
        return None
    x, y = update.operands
    step = _int_constant(step_insts, y)
    if _tuple_index(step_insts, x) != k or step is None:
        if update.op == "subtract" or _tuple_index(step_insts, y) != k:
            return None
        step = _int_constant(step_insts, x)
        if step is None:
            return None
    step = -step if update.op == "subtract" else step
    # the counter's first value, in the tuple the loop starts from
    state = _source(caller, loop.operands[0]) if loop.operands else None
    if state is None or state.op != "tuple" or k >= len(state.operands):
        return None
    start = _int_constant(caller, state.operands[k])
    if start is None or step == 0 or direction not in _FLIP:
        return None
    if (step < 0 and direction in ("LT", "LE")) or (step > 0 and direction in ("GT", "GE")) \
            or (direction == "NE" and ((limit - start) % step or (limit - start) / step < 0)):
        return None  # a loop that does not count towards its limit
    span = limit - start + (step // abs(step) if direction in ("LE", "GE") else 0)
    return max(0, -(-span // step))  # ceil(span / step)


def attention_kernel(config_attention: str, calls: set, platform: str) -> str:
    """Which attention the compiled program runs: cuDNN's fused kernel (its custom call), a
    Pallas kernel, or XLA's own (einsum, or `jax.nn.dot_product_attention`'s XLA path)."""
    if any("cudnn$fmha" in c or "fmha" in c.lower() for c in calls):
        return f"{config_attention}: cudnn fused attention"
    if any("tpu_custom_call" in c or "mosaic" in c.lower() for c in calls):
        return f"{config_attention}: pallas kernel"
    return f"{config_attention}: xla ({'einsum' if config_attention == 'einsum' else 'generic'})"


# ---------------------------------------------------------------------------------------------
# Compiling and reporting
@dataclasses.dataclass
class Compiled:
    """A compiled program's bytes per device (`aot.Memory`), what its HLO runs per step
    (`census`), and how long the compile took."""
    memory: object  # aot.Memory
    census: Census
    seconds: float

    def __getattr__(self, name):  # argument, output, temp, alias, total, error
        return getattr(self.__dict__["memory"], name)


def compile_program(prog, members: int) -> Compiled:
    """Compile `prog` for `members` runs (`aot.compile_memory`) and read its HLO."""
    t0 = time.monotonic()
    mem = aot.compile_memory(prog, members)
    result = Compiled(mem, census(mem.compiled.as_text()) if mem.compiled else Census(),
                      time.monotonic() - t0)
    mem.compiled = None  # the executable is not kept: a search compiles many
    if LOG is not None:
        LOG(f"  compiled {prog.name} with {members} run(s) in {result.seconds:.0f} s: "
            f"{result.total / GIB:.2f} GiB per device"
            + (" (the compiler's out-of-memory refusal)" if result.error else ""))
    return result


LOG = None  # where compile_program reports each compile (set by `run`)


def fits(result, target) -> bool:
    return result.error is None and result.total <= target.memory


def row(prog, target, n_devices: int, result: Compiled, attention: str,
        max_group, platform: str, mesh_shape: dict) -> dict:
    """One program's JSON row (the fields the issue names, plus context)."""
    c = result.census
    per_device_flops = c.flops if platform == "tpu" else None
    model = prog.model_flops * prog.members  # analytic, the whole group's step, all devices
    flops = per_device_flops * n_devices if per_device_flops else model
    compute_s = flops / (n_devices * target.peak_flops)
    memory_s = (result.argument + result.output) / target.hbm_bw  # every argument read once
    coll_bytes = sum(b for _, b in c.collectives.values())
    comm_s = coll_bytes / target.link_bw if target.link_bw else 0.0
    bound = max(compute_s, memory_s, comm_s) if result.error is None else None
    return {
        "program": prog.name, "target": target.name, "n_devices": n_devices,
        "mesh": mesh_shape, "members": prog.members,
        "bytes_per_device": {"argument": result.argument, "output": result.output,
                             "temp": result.temp, "alias": result.alias,
                             "total": result.total},
        "device_bytes": target.memory, "fits": fits(result, target),
        "max_group_size": max_group,
        "flops_per_step": flops,
        "flops_source": ("compiled program's dots x loop trip counts" if per_device_flops
                         else "analytic (the GPU compiler gives no cost analysis)"),
        # loops inside a step whose trip count the census could not read (each counted once):
        # when any, the compiled FLOPs, the collectives and the bound built on them are not
        # the step's, and the table marks them "?"
        "census_unread_loops": list(c.unread_loops),
        "model_flops_per_step": model,
        "step_time_lower_bound_s": bound,
        # at most 1: the analytic count may exceed the compiled one (BERT is counted with
        # Llama's projections), and a ceiling above 1 says nothing
        "mfu_ceiling": min(1.0, model / (n_devices * target.peak_flops * bound))
        if bound else None,
        "collectives": {k: {"count": n, "bytes": b} for k, (n, b) in
                        sorted(c.collectives.items())},
        "attention": attention, "compile_s": round(result.seconds, 1),
        "error": result.error,
    }


def _fmt_gib(n) -> str:
    return f"{n / GIB:.2f}"


def table(rows: list[dict]) -> str:
    head = ("| program | target | mesh | runs | GiB/device (arg+out+temp-alias) | "
            "memory model GiB | of GiB | fits | max group | TFLOP/step | step >= s | MFU <= | "
            "collectives/step | attention |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        b = r["bytes_per_device"]
        mesh = ",".join(f"{k}{v}" for k, v in r["mesh"].items() if v > 1) or "1"
        coll = ", ".join(f"{k} {v['count']}x {v['bytes'] / GIB:.2f}GiB"
                         for k, v in r["collectives"].items()) or "none"
        bound, mfu = r["step_time_lower_bound_s"], r["mfu_ceiling"]
        unsure = " ?" if r.get("census_unread_loops") else ""
        coll += unsure
        lines.append(
            f"| {r['program']} | {r['target']} | {mesh} | {r['members']} | "
            f"{_fmt_gib(b['total'])} ({_fmt_gib(b['argument'])}+{_fmt_gib(b['output'])}+"
            f"{_fmt_gib(b['temp'])}-{_fmt_gib(b['alias'])}) | "
            f"{'-' if r.get('memory_model_bytes') is None else _fmt_gib(r['memory_model_bytes'])}"
            f" | {_fmt_gib(r['device_bytes'])} | "
            f"{'yes' if r['fits'] else 'NO'} | {r['max_group_size']} | "
            f"{r['flops_per_step'] / 1e12:.2f}"
            f"{unsure if r['flops_source'].startswith('compiled') else ''} | "
            f"{'-' if bound is None else f'{bound:.3g}{unsure}'} | "
            f"{'-' if mfu is None else f'{mfu:.2f}{unsure}'} | "
            f"{coll} | {r['attention']} |")
    unread = [f"{r['program']} ({', '.join(r['census_unread_loops'])})" for r in rows
              if r.get("census_unread_loops")]
    if unread:
        lines.append(f"\n? not per step: loops whose trip count the census could not read "
                     f"were counted once, in {'; '.join(unread)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The sweep's programs for a target
@dataclasses.dataclass
class Plan:
    """What a preflight compiles: each program with its learner, and the group size the
    scheduler would choose."""
    programs: list
    strong: object  # aot.Learned
    group_size: int
    n_runs: int
    estimate: object  # memory.Estimate of one member (the scheduler's numbers)
    seen: dict  # the group loop compiled by size
    spread: int = 1  # devices whole runs are spread over (1: every run on every device)

    def model_bytes(self, members: int) -> int:
        """The memory model's bytes per device for the group loop of `members` runs."""
        return self.estimate.group_bytes(-(-members // self.spread))


def plan(config, config_path: str | None, target, devices) -> Plan:
    """The programs the sweep would run for `config` on `target` (module docstring)."""
    from scalable_elicitation import experiment, grouping, groups, runner
    from scalable_elicitation.learner import LearnerConfig
    from scalable_elicitation.planning import Planner
    from scalable_elicitation.shared import learner_config
    from scalable_elicitation.stage import StageConfig, stage_schedule

    platform = target.kind
    points = experiment.sweep_points(config_path, config) if config_path else []
    points = points or [{"budget": b, "fraction": f, "seed": 0}
                        for b in config.budgets for f in config.fractions]
    planner = Planner(config, NO_WORKDIR)
    specs = planner.plan(points)
    rows, val_rows, steps = runner.stage_shapes(config, specs)
    strong = aot.learned(learner_config(config, platform), devices)
    placement = config.get("group_sharding", "auto")
    axis = groups.run_mesh_axis(strong.mesh, placement, len(specs))
    spread = 1 if axis is None else strong.mesh.shape[axis]  # whole runs over these devices
    # the memory model for one device: its share of the mesh when runs are placed as rows,
    # whole runs on one device otherwise (as `runner.auto_group_size`)
    estimate = runner.member_estimate(strong.lcfg, strong.bundle, strong.micro, strong.probe,
                                      rows, platform, val_rows=val_rows,
                                      mesh=dict(strong.mesh.shape) if axis is None else None)
    seen: dict = {}  # compiled group loops by size, shared with the largest-group search
    if config.get("parallel_runs", 0) >= 1:
        size = int(config.parallel_runs)
    else:  # as `Sweep.group_size`: the estimate against the memory left beside the base
        free = spread * (target.memory - aot.argument_bytes(strong.steps.frozen)
                         - estimate.gathered)
        cap = min(len(specs), grouping.max_auto_group(platform, strong.probe))
        start = grouping.auto_group_size(estimate.per_member, max(free, 0), len(specs), cap)
        # then checked by compiling, as the scheduler does on the accelerator
        size = runner.compiled_group_size(strong, config, specs, target.memory, start, cap,
                                          compile_at=compile_program, seen=seen)
    programs = [aot.inference_program("", strong),
                aot.loop_program("", strong, loss=config.loss, rows=rows, val_rows=val_rows,
                             steps=steps, members=size, group_sharding=placement)]
    icl = icl_scoring(planner, specs)
    if icl:  # in-context runs' scoring (`Learner.icl_scores_uncached`)
        programs += aot.icl_programs("", strong, prefix_length=icl[0], runs=min(size, icl[1]))
    lab = config.labeler
    if lab.kind == "model":  # the weak labeller's learner and stage (labelers/model.py)
        lcfg = LearnerConfig(lab.source, trainable=lab.trainable, dtype=config.dtype,
                             max_length=lab.max_length, buckets=(lab.max_length,),
                             batch_size=lab.batch_size, micro_batch=lab.get("micro_batch", 0))
        weak = aot.learned(lcfg, devices)
        total = stage_schedule(lab.n_train, 0, StageConfig(lr=lab.lr, epochs=lab.epochs,
                                                           use_validation=False),
                               lab.batch_size).total
        programs += [aot.inference_program("labeler_", weak),
                     aot.loop_program("labeler_", weak, loss="xent", rows=lab.n_train,
                                  val_rows=1, steps=total, members=1, group_sharding="rows")]
    return Plan(programs, strong, size, len(specs), estimate, seen, spread)


def icl_scoring(planner, specs) -> tuple[int, int] | None:
    """(padded length of the longest prompt prefix, distinct prompts) of the in-context runs
    among `specs` (a point's overrides may make it one, with its own k), or None without
    any. Prompts are counted, at most, as one per seed, shot mix (the method's `shot_mix`)
    and shot and input lengths: runs with equal prompts are scored once
    (`Learner.icl_scores_many`)."""
    from scalable_elicitation import methods
    longest, prompts = 0, set()
    for s in specs:
        c = planner.run_config(s.overrides)
        method = methods.get(c.method)
        if not method.in_context:
            continue
        longest = max(longest, aot.icl_prefix_length(c.k, c.shot_max_length))
        mix = method.shot_mix(c.k, s.n_oracle, s.n_weak)
        if sum(mix):
            prompts.add((s.seed, *mix, c.shot_max_length, c.max_length))
    return (longest, max(1, len(prompts))) if longest else None


# Settings tried, in order, for a program that does not fit: the first that compiles within
# the device's memory is named in its failure line.
def _alternatives(config) -> list[tuple[str, dict]]:
    out = []
    mesh = dict(config.mesh)
    if mesh.get("fsdp", 1) == 1:
        out.append(("--config.mesh.data=1 --config.mesh.fsdp=-1",
                    {"mesh": {"data": 1, "fsdp": -1, "tensor": 1}}))
    if config.train.get("micro_batch", 0) != 1:
        out.append(("--config.train.micro_batch=1", {"train.micro_batch": 1}))
    if not config.remat:
        out.append(("--config.remat=True", {"remat": True}))
    if config.trainable == "full":
        out.append(("--config.trainable=lora", {"trainable": "lora"}))
    return out


def _with(config, changes: dict):
    c = config.copy_and_resolve_references()
    with c.unlocked():
        for key, value in changes.items():
            node = c
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            if isinstance(value, dict):
                node[leaf].update(value)
            else:
                node[leaf] = value
    return c


def run(config, config_path: str | None, target_name: str, *, search: bool = True,
        log=print) -> tuple[list[dict], list[str]]:
    """Compile the sweep's programs for a target: (JSON rows, failure lines). Raises
    `targets.MissingExtra` when this JAX cannot compile for the target. JAX's persistent
    compilation cache is off meanwhile: a compile-only device cannot load a cached
    executable ("PjRtCompiler must be constructed with a Client"), and a preflight's
    programs are never run."""
    import jax
    cached = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        return _run(config, config_path, target_name, search=search, log=log)
    finally:
        jax.config.update("jax_enable_compilation_cache", cached)


def _run(config, config_path: str | None, target_name: str, *, search: bool,
         log) -> tuple[list[dict], list[str]]:
    from scalable_elicitation import grouping, planning
    from scalable_elicitation.runner import resolve_auto_dtype

    global LOG
    LOG = log
    target = targets_lib.get(target_name)
    devices = targets_lib.devices(target)
    config = resolve_auto_dtype(config, platform=target.kind)
    planning.validate(config)
    p = plan(config, config_path, target, devices)
    log(f"preflight: {target.name}: {len(devices)} {devices[0].device_kind} devices, "
        f"{target.hosts} host(s), {target.memory / GIB:.2f} GiB each"
        + (f" ({target.memory / max(target.card_memory, 1):.0%} of the card's "
           f"{target.card_memory / GIB:.2f}: JAX's share, XLA_PYTHON_CLIENT_MEM_FRACTION)"
           if target.card_memory else "") + "; mesh "
        f"{dict(p.strong.mesh.shape)}; {p.n_runs} runs, groups of {p.group_size} "
        f"(memory model: {p.estimate.shared / GIB:.2f} GiB shared, "
        f"{p.estimate.per_member / GIB:.3f} GiB a member, per device)")
    rows, failures = [], []
    for prog in p.programs:
        strong = not prog.name.startswith("labeler")
        if prog.grouped and strong and prog.members in p.seen:
            result = p.seen[prog.members]
        else:
            result = compile_program(prog, prog.members)
        max_group = None
        if prog.grouped and search and strong:
            p.seen[prog.members] = result
            max_group = aot.largest_fitting(
                lambda g: compile_program(prog, g), target.memory, prog.members,
                max(prog.members, min(p.n_runs, grouping.MAX_AUTO_GROUP_ACCELERATOR)), p.seen)
        lcfg = p.strong.lcfg if not prog.name.startswith("labeler") else None
        attention = attention_kernel(lcfg.attention if lcfg else "einsum",
                                     result.census.custom_calls, target.kind)
        mesh = dict(p.strong.mesh.shape)
        r = row(prog, target, len(devices), result, attention, max_group, target.kind, mesh)
        r["memory_model_bytes"] = (p.model_bytes(prog.members) if prog.name == "train_loop"
                                   else None)
        rows.append(r)
        if not r["fits"]:
            failures.append(_failure_line(config, config_path, target, prog, result, devices,
                                          log))
    return rows, failures


def _failure_line(config, config_path, target, prog, result, devices, log) -> str:
    """`PROGRAM on TARGET: needs X GiB per device, has Y (short by Z); SETTING fits (W GiB)`,
    the setting found by compiling the alternatives in turn."""
    need = result.total
    short = need - target.memory
    head = (f"{prog.name} on {target.name}: needs {need / GIB:.2f} GiB per device, has "
            f"{target.memory / GIB:.2f} (short by {short / GIB:.2f} GiB)")
    if prog.grouped and prog.members > 1:
        return head + f"; --config.parallel_runs=1 or fewer runs per group"
    for flag, changes in _alternatives(config):
        try:  # one run: whether the setting fits at all, not how many runs it holds
            alt = _with(config, {**changes, "parallel_runs": 1})
            p = plan(alt, config_path, target, devices)
            same = [q for q in p.programs if q.name == prog.name]
            if not same:
                continue
            r = compile_program(same[0], 1)
        except Exception as err:  # noqa: BLE001 - an alternative that cannot build
            log(f"  (alternative {flag}: {type(err).__name__}: {err})")
            continue
        log(f"  alternative {flag}: {r.total / GIB:.2f} GiB per device")
        if fits(r, target):
            return head + f"; {flag} fits ({r.total / GIB:.2f} GiB)"
    return head + "; no single setting tried fits (mesh fsdp, micro_batch=1, remat, LoRA)"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _TARGET.value:
        print("preflight: --target is required; known: " + ", ".join(targets_lib.TARGETS),
              file=sys.stderr)
        return 2
    try:
        targets_lib.get(_TARGET.value)
    except ValueError as err:
        print(f"preflight: {err}", file=sys.stderr)
        return 2
    path = config_flags.get_config_filename(FLAGS["config"])
    t0 = time.monotonic()
    try:
        rows, failures = run(_CONFIG.value, path, _TARGET.value, search=_SEARCH.value,
                             log=lambda m: print(m, file=sys.stderr, flush=True))
    except targets_lib.MissingExtra as err:
        print(f"preflight: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"preflight: {err}", file=sys.stderr)
        return 2
    print(table(rows))
    print(f"preflight: {len(rows)} programs compiled for {_TARGET.value} in "
          f"{time.monotonic() - t0:.0f} s; step-time bounds and MFU are roofline ceilings, "
          "not predictions", file=sys.stderr)
    if _OUT.value:
        from scalable_elicitation.paths import atomic_write
        atomic_write(_OUT.value, (json.dumps(rows, indent=1) + "\n").encode())
    for line in failures:
        print(f"DOES NOT FIT: {line}", file=sys.stderr)
    return 3 if failures else 0


if __name__ == "__main__":
    define_flags()
    flags.mark_flag_as_required("config")
    app.run(lambda argv: sys.exit(main(argv)))

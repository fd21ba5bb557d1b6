"""The memory plan of a composed run: what each resident thing holds on the GPU, before any
model loads (`python -m loop.plan`, and the launch check of `loop.run` on a GPU, or wherever
plan.gpu_memory is given).

Weights and LoRA sizes are exact: each model is built from its architecture config on the
`meta` device (no weights read; loop.core.architecture) and its parameters and target modules
counted. KV caches are
exact for their token counts. Activations are estimates: per token and block, what a
Llama/Qwen block keeps for its backward in the GPU dtype (the residual and norm inputs, q/k/v/o,
the attention output, the MLP's gate, up, activation and product) plus each LoRA target's input
in float32 (PEFT and student.adapters run the adapters in float32). Token counts are the
settings' upper bounds (a self-edit of `max_new_tokens`; the domain's `shape`: a SQuAD passage, an
ARC sequence of student.arc.max_tokens), so the plan errs high. Allocator slack, CUDA context and
kernels' workspaces are one row, `RESERVE`. A round's phases follow each other (the teacher
samples; the inner loop trains adapters, then they answer; the M-step trains), and what one
frees the next reuses (the caching allocator keeps it): the peak is what stays resident
(weights, vLLM engines' shares) plus the largest phase. A vLLM engine's share must hold its
weights, its LoRA slots and a KV cache for one sequence of its max_model_len (its start-up
activations and CUDA graphs are not counted: leave it some room).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from loop.core.architecture import Arch, Unplannable, arch_of, architecture  # noqa: F401
from loop.core.domain import domain_of
from loop.core.errors import ConfigError
from loop.core.judge import judge_config
from teacher.train import checkpointing

log = logging.getLogger(__name__)
GiB = 2**30
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
RESERVE = 2.0 * GiB  # CUDA context, cuBLAS/attention workspaces, allocator fragmentation


@dataclass(frozen=True)
class Row:
    what: str
    bytes: float
    note: str = ""
    lower: str = ""  # the settings that shrink it, for the launch check's one line
    need: float = 0.0  # a vLLM engine: what it needs inside its share

    @property
    def phase(self) -> str:
        """The phase of a round that holds this row ("" for what stays resident): the phases
        follow each other, so only the largest adds to what is resident."""
        return next((p for p in PHASES if self.what.startswith(p + ":")), "")


PHASES = ("teacher sampling", "inner loop", "answering", "M-step")


def total(rows: list[Row]) -> tuple[float, float, str]:
    """(peak bytes, resident bytes, the largest phase): what stays resident plus the phase of a
    round that holds the most."""
    resident = sum(r.bytes for r in rows if not r.phase)
    phases = {p: sum(r.bytes for r in rows if r.phase == p) for p in PHASES}
    largest = max(phases, key=phases.get)
    return resident + phases[largest], resident, largest


def parse_size(text) -> float:
    """'80GiB', '80GB' (taken as GiB), '81920MiB' or a number of GiB -> bytes."""
    s = str(text).strip().lower().replace(" ", "")
    units = (("gib", GiB), ("gb", GiB), ("mib", 2**20), ("mb", 2**20), ("g", GiB), ("", GiB))
    unit, scale = next((u, x) for u, x in units if s.endswith(u))
    try:
        return float(s[: len(s) - len(unit)]) * scale
    except ValueError:
        raise ConfigError(f"plan.gpu_memory must be a size such as 80GiB, got {text!r}") from None


def _dtype_bytes(setting: str) -> int:
    return BYTES.get("bfloat16" if setting == "auto" else setting, 2)


def max_model_len(run, role: str) -> int:
    """The longest sequence a role's vLLM engine is sent: prompt + max_new_tokens (the teacher:
    a passage or an ARC task's demonstrations, then a self-edit; the student: a question with
    its prompt, then an answer, or an ARC query): the domain's `shape`."""
    shape = domain_of(run.task).shape(run)
    if role == "teacher":
        return shape.teacher_prompt + run.teacher.sampling.max_new_tokens
    return shape.student_sequence


def plan(run, gpu_memory: float | None = None) -> tuple[list[tuple[str, list[Row]]], float]:
    """[(device, rows)] of what the run keeps on each device, and the device's memory (bytes;
    `gpu_memory` or, on a GPU machine, the first GPU's). The driver's GPU: the teacher, the
    student (and judge) the loop holds, the vLLM engines' shares, the inner loop's adapters and
    passes, the M-step. executor=ray with GPU workers: each worker's student and inner loop on
    its own GPU, the driver keeping its own student; a local Ray on one GPU (plan.gpus, else
    this machine's count): every worker's rows beside the driver's on GPU 0."""
    t, s = run.teacher, run.student
    teacher, student = architecture(t), architecture(s)
    tb, sb = _dtype_bytes(t.dtype), _dtype_bytes(s.dtype)
    driver: list[Row] = []
    driver.append(Row(f"teacher weights ({t.name})", teacher.params * tb,
                      f"{teacher.params / 1e9:.2f}B parameters x {tb} bytes"))
    if t.backend == "vllm":
        driver.append(engine_row("teacher", run, teacher, tb, t.vllm_memory, gpu_memory))
    # the teacher's M-step: LoRA weights, grads and Adam in float32, activations per pass
    lora = t.train.lora
    lp = teacher.lora_params(lora.r, lora.targets)
    micro = t.train.micro_batch or max(1, t.train.batch_size // max(1, t.train.processes))
    ckpt = checkpointing(t.train.checkpointing, gpu=True)
    tokens = micro * max_model_len(run, "teacher")
    act = tokens * teacher.activation_bytes_per_token(tb, lora.targets, ckpt)
    if t.train.processes > 1:  # accelerate's process 0 loads its own teacher beside the loop's
        driver.append(Row("M-step: the teacher again, in accelerate's process 0",
                          teacher.params * tb, f"teacher.train.processes={t.train.processes}",
                          "set teacher.train.processes=1"))
    driver.append(Row(f"M-step: teacher LoRA r={lora.r}, grads, Adam", lp * 16,
                      f"{lp / 1e6:.1f}M parameters x (4 + 4 + 8) bytes",
                      "lower teacher.train.lora.r"))
    driver.append(Row(f"M-step: activations of {micro} pair(s) per pass", act,
                      f"{tokens} tokens, checkpointing {'on' if ckpt else 'off'}",
                      "lower teacher.train.micro_batch" + (
                          "" if ckpt else " or set teacher.train.checkpointing=true")))
    if t.backend != "vllm":  # sampling in process: KV cache of a batch
        seqs = t.sampling.batch_size
        kv = seqs * max_model_len(run, "teacher") * teacher.kv_bytes_per_token(tb)
        driver.append(Row(f"teacher sampling: KV cache of {seqs} sequences", kv,
                          "teacher.sampling.batch_size x (prompt + max_new_tokens)",
                          "lower teacher.sampling.batch_size"))
    inner = student_rows(run, student, sb)
    if s.eval_backend == "vllm":
        inner.append(engine_row("student", run, student, sb, s.vllm_memory, gpu_memory))
    devices = [("GPU 0 (the driver)", driver)]
    if run.executor.name == "ray":
        # the loop keeps its own student (and judge) for the baselines and proxies
        driver += [r for r in inner if not r.phase and "vLLM" not in r.what]
        share = run.executor.gpus_per_worker
        if share == 0:
            pass  # the workers' students are on their CPUs
        elif run.executor.address is None and gpus(run) <= 1:
            # a local Ray on one GPU: every worker's student beside the loop's, on GPU 0
            n = run.executor.num_workers
            driver += [Row(f"{r.what} (x {n} workers)" if r.phase else
                           f"Ray workers: {r.what} (x {n})", r.bytes * n, r.note, r.lower)
                       for r in inner]
            devices[0] = (f"GPU 0 (the driver and {n} local Ray workers)", driver)
        else:
            devices.append((f"each Ray worker's GPU ({'auto' if share is None else share} GPU)",
                            inner))
    else:
        driver += inner
    for _, rows in devices:
        rows.append(Row("CUDA context, workspaces, fragmentation", RESERVE, "an allowance"))
    if gpu_memory is None:
        gpu_memory = detected_gpu_memory()
    return devices, gpu_memory


def student_rows(run, student: Arch, sb: int, *, pass_tokens: int | None = None,
                 adapters: int | None = None, longest: int | None = None) -> list[Row]:
    """The student's rows: its weights (and the judge's), the inner loop's adapters and one
    pass's activations. `pass_tokens`, `adapters`, `longest`: instead of the settings'
    (student.train.pass_tokens, student.train.max_adapters, the longest sequence they allow)."""
    s = run.student
    shape = domain_of(run.task).shape(run, longest)
    rows = [Row(f"student weights ({s.name})", student.params * sb,
                f"{student.params / 1e9:.2f}B parameters x {sb} bytes")]
    if run.reward.judge:  # loaded whenever it is named (it may also grade other metrics' rows)
        judge = judge_config(run.reward.judge)
        arch = architecture(judge)
        jb = _dtype_bytes(judge.dtype)
        rows.append(Row(f"judge weights ({judge.name})", arch.params * jb,
                        f"{arch.params / 1e9:.2f}B parameters x {jb} bytes",
                        "choose a smaller reward.judge"))
    lora = shape.lora
    k = adapters or max(1, s.train.max_adapters)
    lp = student.lora_params(lora.r, lora.targets)
    rows.append(Row(f"inner loop: {k} adapters r={lora.r}, grads, Adam", k * lp * 16,
                    f"{lp / 1e6:.1f}M parameters each x 16 bytes",
                    "lower student.train.max_adapters"))
    longest, per_adapter = shape.longest, shape.per_adapter
    pass_tokens = s.train.pass_tokens if pass_tokens is None else pass_tokens
    tokens = max(pass_tokens, longest) if pass_tokens else k * per_adapter
    act = tokens * student.activation_bytes_per_token(sb, lora.targets, False)
    rows.append(Row(f"inner loop: activations of one pass ({tokens} tokens)", act,
                    f"student.train.pass_tokens={pass_tokens}" if pass_tokens else
                    "student.train.pass_tokens unset: every adapter's step in one pass",
                    "set a lower student.train.pass_tokens"))
    # the loss (student.batched.train): each target's float32 log-softmax over the vocabulary is
    # kept for the backward; a slice of 256 targets' logits (model dtype, then float32) at a time
    head = tokens * student.vocab * 4 + 256 * student.vocab * (sb + 4 + 4)
    rows.append(Row(f"inner loop: log-softmax of {tokens} targets (vocabulary "
                    f"{student.vocab})", head, "kept for the backward: 4 bytes per target and "
                    "token of the vocabulary", "set a lower student.train.pass_tokens"))
    batch = s.eval.batch_size
    length = max_model_len(run, "student")
    rows.append(Row(f"answering: {k} adapters' weights", k * lp * 4, "float32, after training"))
    rows.append(Row(f"answering: KV cache of {batch} sequences",
                    batch * length * student.kv_bytes_per_token(sb),
                    f"student.eval.batch_size x {length} tokens", "lower student.eval.batch_size"))
    return rows


def engine_row(role: str, run, arch: Arch, dtype_bytes: int, share: float,
               gpu_memory: float | None) -> Row:
    """A vLLM engine takes `share` of the whole GPU (gpu_memory_utilization): its weights and
    a KV cache that must hold at least one sequence of max_model_len."""
    length = max_model_len(run, role)
    cfg = getattr(run, role)
    lora = cfg.train.lora if role == "teacher" else domain_of(run.task).shape(run).lora
    slots = 1 if role == "teacher" else max(1, cfg.train.max_adapters)
    loras = slots * arch.lora_params(lora.r, lora.targets) * dtype_bytes  # its LoRA slots
    need = arch.params * dtype_bytes + loras + length * arch.kv_bytes_per_token(dtype_bytes)
    total = gpu_memory if gpu_memory is not None else detected_gpu_memory()
    taken = share * total if total else need
    key = f"{role}.vllm_memory"
    return Row(f"{role} vLLM engine ({key}={share})", taken,
               f"weights {arch.params * dtype_bytes / GiB:.1f} GiB + {slots} LoRA slot(s) "
               f"{loras / GiB:.2f} GiB + KV for one "
               f"{length}-token sequence {length * arch.kv_bytes_per_token(dtype_bytes) / GiB:.2f}"
               f" GiB = {need / GiB:.1f} GiB needed (max_model_len={length})",
               f"lower {key}", need)


def gpus(run) -> int:
    """The GPUs this machine has (plan.gpus when given; 1 where there is none to count)."""
    if run.plan.gpus:
        return run.plan.gpus
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def detected_gpu_memory() -> float | None:
    import torch

    if torch.cuda.is_available():
        return float(torch.cuda.get_device_properties(0).total_memory)
    return None


def table(run, gpu_memory: float | None) -> str:
    devices, memory = plan(run, gpu_memory)
    lines = []
    for device, rows in devices:
        lines.append(f"{device}:")
        for phase in ("", *PHASES):
            for row in (r for r in rows if r.phase == phase):
                lines.append(f"  {row.what:<62}{row.bytes / GiB:>7.1f} GiB  {row.note}")
        peak, resident, largest = total(rows)
        verdict = ("" if memory is None else
                   f" of {memory / GiB:.0f} GiB: {'fits' if peak <= memory else 'DOES NOT FIT'}")
        lines.append(f"  {'peak: resident ' + f'{resident / GiB:.1f}' + ' + the ' + largest:<62}"
                     f"{peak / GiB:>7.1f} GiB{verdict}")
    return "\n".join(lines)


def check(run) -> None:
    """At launch: a ConfigError of one line when the plan does not fit the GPU (or the given
    plan.gpu_memory); nothing when there is no GPU and no size was given."""
    import torch

    gpu_memory = parse_size(run.plan.gpu_memory) if run.plan.gpu_memory else None
    if not run.plan.check or (gpu_memory is None and not torch.cuda.is_available()):
        return
    try:
        devices, memory = plan(run, gpu_memory)
    except Unplannable as e:
        log.warning("memory plan skipped, the run starts unchecked: %s", e)
        return
    if memory is None:
        return
    for device, rows in devices:
        for r in rows:
            if r.need > r.bytes:
                key = r.lower.removeprefix("lower ")
                raise ConfigError(
                    f"the {r.what}: {r.note}, but its share is {r.bytes / GiB:.1f} GiB of "
                    f"{memory / GiB:.0f} GiB: raise {key} (python -m loop.plan <same overrides> "
                    "shows the whole plan)")
        peak, _, largest = total(rows)
        if peak > memory:
            counted = sorted((r for r in rows if r.phase in ("", largest) and r.lower),
                             key=lambda r: -r.bytes)
            big = [r for n, r in enumerate(counted)  # each setting once, with its largest row
                   if r.lower.split(" (")[0] not in [c.lower.split(" (")[0] for c in counted[:n]]]
            big = big[:3]
            advice = "; ".join(f"{r.lower} ({r.bytes / GiB:.1f} GiB: {r.what})" for r in big)
            raise ConfigError(
                f"this run plans {peak / GiB:.1f} GiB at its peak ({largest}) on {device}, over "
                f"its {memory / GiB:.0f} GiB: {advice} (python -m loop.plan <same overrides> "
                "shows every row; the plan errs high: plan.check=false starts anyway)")

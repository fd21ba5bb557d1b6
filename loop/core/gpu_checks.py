"""The correctness checks of `python -m loop.gpu_check` (scripts/gpu_check.sh), each one
PASS / FAIL / SKIP line; the check exits non-zero when any fails.

On a randomly initialised student of a real architecture (values do not need trained weights):
- `inner loop <dtype>`: the same self-edits absorbed and scored one adapter at a time (PEFT,
  torch AdamW) and batched (student.batched): losses and per-token gold log-probabilities agree
  within TOLERANCE for the dtype (float32: tight; bfloat16: its ~3 significant digits), and in
  float32 the generated answers are the same (at least ANSWERS of them: a random model's flat
  logits can tie);
- `teacher sampling`: the same prompts and seeds sampled twice give the same text, with one
  seeded generator per row on the device (teacher.generate);
- `M-step`: one optimiser step of TRL's SFT on two pairs (teacher.train.train_adapter), or, where
  TRL is not importable, of our completion head with torch's AdamW: a finite loss and a LoRA
  that moved;
- `memory plan`: the batched inner loop's measured peak (CUDA: max_memory_allocated above what
  was allocated before; CPU: peak RSS above the RSS before) against loop.core.memory's plan for
  the same adapters and passes, and against the plan at its own token count: on CUDA it must not
  exceed the plan (FAIL where the plan is too low); on a CPU the ratio is reported (RSS holds
  the allocator's and Python's own memory).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass

from loop.core import memory
from student.absorb import plan
from teacher.config import SamplingSettings
from teacher.generate import sample
from teacher.train import completion_loss, train_adapter

# dtype -> (largest |difference| of a loss, of a per-token gold log-probability)
# (bf16's tolerance: what bf16 on a CPU gave on SmolLM2-135M's architecture, docs/gpu.md)
TOLERANCE = {"float32": (1e-3, 2e-3), "bfloat16": (0.05, 0.2)}
ANSWERS = 0.9  # float32: the share of generated answers that must be the same


@dataclass
class Outcome:
    name: str
    status: str  # PASS, FAIL, SKIP, INFO
    detail: str

    def line(self) -> str:
        return f"{self.status} {self.name}: {self.detail}"


def compare_paths(alone: list, batched: list, dtype: str) -> Outcome:
    """Results of absorb_and_score_many on the two paths, job by job."""
    loss_tol, logprob_tol = TOLERANCE[dtype]
    loss_diff = max(abs(a - b) for (_, la), (_, lb) in zip(alone, batched, strict=True)
                    for a, b in zip(la, lb, strict=True))
    pairs = [(ra, rb) for (sa, _), (sb, _) in zip(alone, batched, strict=True)
             for ra, rb in zip(sa, sb, strict=True)]
    lp_diff = max(abs(ra["logprob"] - rb["logprob"]) for ra, rb in pairs)
    same = sum(ra.get("prediction") == rb.get("prediction") for ra, rb in pairs) / len(pairs)
    ok = loss_diff <= loss_tol and lp_diff <= logprob_tol and (
        dtype != "float32" or same >= ANSWERS)
    finite = all(math.isfinite(x) for _, losses in batched for x in losses)
    return Outcome(f"inner loop {dtype} (batched = one at a time)",
                   "PASS" if ok and finite else "FAIL",
                   f"{len(alone)} self-edits, {len(pairs)} questions: max |loss diff| "
                   f"{loss_diff:.2e} (<= {loss_tol:g}), max |log-prob diff| {lp_diff:.2e} "
                   f"(<= {logprob_tol:g}), same answers {same:.0%}"
                   + (f" (>= {ANSWERS:.0%})" if dtype == "float32" else " (reported)"))


def sampling(model, tokenizer, device: str) -> Outcome:
    settings = SamplingSettings(temperature=1.0, top_p=0.95, max_new_tokens=12, batch_size=2)
    instruct = bool(getattr(tokenizer, "chat_template", None))
    prompts = ["Write the implications of: the British blockaded Piraeus.",
               "Write the implications of: Greece did not declare war."]
    first = sample(model, tokenizer, prompts, [11, 12], instruct=instruct, settings=settings)
    again = sample(model, tokenizer, prompts, [11, 12], instruct=instruct, settings=settings)
    same = [a.text for a in first] == [b.text for b in again]
    return Outcome("teacher sampling", "PASS" if same else "FAIL",
                   f"2 prompts, seeded generators on {device}, top-p 0.95: the same text twice "
                   f"{'yes' if same else 'NO'}")


def m_step(model, tokenizer, run, tmp, use_trl: bool | None = None) -> Outcome:
    """One optimiser step of the M-step on two pairs: TRL's where it is importable (`use_trl`
    None), else our completion head with torch's AdamW."""
    import torch

    pairs = [("Write the implications of: the British blockaded Piraeus.",
              "Piraeus was blockaded.\nThe blockade was British."),
             ("Write the implications of: Greece did not declare war.",
              "Greece stayed out of the war.\nNo war was declared by Greece.")]
    before = {n: p.detach().clone() for n, p in list(model.named_parameters())[:4]}
    if use_trl is None:
        use_trl = bool(importlib.util.find_spec("trl") and importlib.util.find_spec("datasets"))
    if use_trl:
        teacher = dataclasses.replace(run.teacher, instruct=False, train=dataclasses.replace(
            run.teacher.train, epochs=1, batch_size=2, micro_batch=None, processes=1,
            lora=dataclasses.replace(run.teacher.train.lora, r=8, alpha=16)))
        from safetensors.torch import load_file

        stats = train_adapter(model, tokenizer, pairs, teacher, tmp / "adapter", seed=0)
        saved = load_file(str(tmp / "adapter" / "adapter_model.safetensors"))
        # B starts at zero: a saved B that is not all zero has had a step
        moved = any(t.abs().sum().item() > 0 for n, t in saved.items() if "lora_B" in n)
        loss, how = stats.losses[-1] if stats.losses else float("nan"), "TRL SFT"
    else:
        from peft import LoraConfig, get_peft_model

        peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM",
                                                      target_modules=["q_proj", "v_proj"]))
        lora = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
        opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], 1e-3)
        rows = [tokenizer(p + "\n" + c)["input_ids"] for p, c in pairs]
        width = max(map(len, rows))
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
        labels = ids.clone()
        labels[:, : width // 2] = -100
        for r, row in enumerate(rows):
            labels[r, len(row):] = -100
        device = next(model.parameters()).device
        peft_model.train()
        out, _ = completion_loss(peft_model, {"input_ids": ids.to(device),
                                              "labels": labels.to(device)})
        out.backward()
        opt.step()
        moved = any(p.abs().sum().item() > 0 for p in lora)
        loss, how = out.item(), "TRL not importable: our completion head, torch AdamW"
        peft_model.unload()
    base_same = all(torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    ok = math.isfinite(loss) and moved and base_same
    return Outcome("M-step", "PASS" if ok else "FAIL",
                   f"one step on 2 pairs ({how}): loss {loss:.3f}, adapter "
                   f"{'moved' if moved else 'DID NOT MOVE'}, base "
                   f"{'unchanged' if base_same else 'CHANGED'}")


def largest_pass(model, tokenizer, jobs, run, pass_tokens: int) -> int:
    """The tokens of the batched path's largest pass: its step's packed sequences over every
    live adapter (pass_tokens 0), or about pass_tokens (at least the longest sequence)."""
    steps = [plan(model, tokenizer, texts, run.student, seed, packing=True).steps
             for _, texts, seed in jobs]
    per_step = [sum(s[i]["input_ids"].numel() for s in steps if i < len(s))
                for i in range(max(map(len, steps)))]
    longest = max(s["input_ids"].numel() for js in steps for s in js)
    biggest = max(per_step)
    return biggest if pass_tokens <= 0 else min(biggest, max(pass_tokens, longest))


def memory_plan(config_values: dict, run, dtype: str, k: int, pass_tokens: int, measured: float,
                tokens: int, device: str) -> Outcome:
    """`measured`: bytes the batched path added at its peak."""
    arch = memory.arch_of(config_values, run.student.name)
    nbytes = memory.BYTES[dtype]

    def phase_peak(rows) -> float:  # the largest phase, as the plan adds it to what is resident
        peak, resident, _ = memory.total(rows)
        return peak - resident

    planned = phase_peak(memory.student_rows(run, arch, nbytes, pass_tokens=pass_tokens,
                                             adapters=k))
    at_tokens = phase_peak(memory.student_rows(run, arch, nbytes, pass_tokens=tokens,
                                               adapters=k, longest=tokens))
    ratio, ratio_at = measured / planned, measured / at_tokens
    detail = (f"batched k={k}: measured {measured / 2**30:.3f} GiB above the weights; planned "
              f"{planned / 2**30:.3f} GiB at the settings' bounds (ratio {ratio:.2f}), "
              f"{at_tokens / 2**30:.3f} GiB at this run's {tokens}-token pass "
              f"(ratio {ratio_at:.2f})")
    if device != "cuda":
        return Outcome("memory plan", "INFO", detail + "; CPU RSS also holds the allocator's "
                       "and Python's memory: reported, not checked")
    return Outcome("memory plan", "PASS" if measured <= planned else "FAIL", detail)

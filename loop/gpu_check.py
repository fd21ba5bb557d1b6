"""`python -m loop.gpu_check` (`scripts/gpu_check.sh`): correctness first, then the inner
loop's speed on a GPU, one adapter at a time against batched adapters, with randomly
initialised students of the real architectures: no hub, no network, no weights to carry.

Correctness (loop/core/gpu_checks.py, on the first architecture): batched adapters against one
at a time in float32 and bfloat16, a teacher sampling step, one M-step step, and, per architecture,
the memory plan against the batched path's measured peak; one PASS/FAIL line each. The command
exits 1 when any check fails.

    scripts/gpu_check.sh                          # on a GPU machine: bf16, k = 8 and 32
    python -m loop.gpu_check --tiny --k 2 student.train.epochs=1   # on a CPU, tiny (tests)

Speed does not depend on the weights, so each student is built from its architecture's
config (`data/architectures/*.json`: SmolLM2-135M, Llama-3.2-1B, Qwen2.5-7B, the numbers of
their published configs) with random weights, in bf16 on a GPU (float32 on a CPU), with the
student preset's inner-loop settings (`student=smollm135m`, `llama1b`, `qwen7b`). The
self-edits are the bench's recorded sample (data/bench/self_edits.json) with their passages'
questions (answers generated and graded, `reward.metric=f1`), cycled to k with distinct seeds,
and tokenized by a bundled tokenizer (Qwen2.5's
for Qwen, SmolLM2's for the Llama architectures: Llama-3.2's is not bundled; its token counts
differ a little). A random student generates every answer to its token limit, which is
the slowest case.

For each architecture it prints self-edits per minute one adapter at a time
(`student.train.batched=false`, PEFT) and batched (`true`, k adapters in shared passes) for
each k, the speed-up and the peak memory of each path, as each row is measured, then the batched
path's achieved FLOP/s against this device's dense matmul peak measured in the same run (FLOPs
counted by torch's FlopCounterMode over one batched pass of the smallest k, scaled by k; padding
included). Work that would run past `--budget-s` is skipped and said so; an architecture that
fails (out of memory, a config this transformers cannot build) says why and the next one runs.
The last line is

    gpu_check: <PASS|FAIL> <n> passed <m> failed of <checks> checks; <architectures measured>
        of <asked> measured device=<cuda|cpu> dtype=<dtype> seconds=<s>      (one line)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import loop.tasks  # noqa: F401 (hands loop.core the domains, loop.core.domain.provide)
from loop.core.config import PROJECT_ROOT, ConfigError
from loop.core.gpu_checks import Outcome

ARCHITECTURES = PROJECT_ROOT / "data" / "architectures"
# architecture -> (the student preset whose inner-loop settings it runs, bundled tokenizer)
STUDENTS = {"smollm2-135m": ("smollm135m", "smollm135m"),
            "llama3.2-1b": ("llama1b", "smollm135m"),
            "qwen2.5-7b": ("qwen7b", "qwen0.5b")}
TINY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}


def architecture(name: str, tiny: bool):
    """The transformers config of `name` (data/architectures/<name>.json); `tiny`: 2 layers of
    width 64, the real vocabulary."""
    from transformers import AutoConfig

    values = architecture_values(name, tiny)
    values.pop("architectures", None)
    return AutoConfig.for_model(values.pop("model_type"), **values)


def architecture_values(name: str, tiny: bool) -> dict:
    path = ARCHITECTURES / f"{name}.json"
    if not path.exists():
        raise ConfigError(f"no architecture {name}: choose from {sorted(STUDENTS)}")
    values = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    if tiny:
        values.update(TINY)
    return values


def random_student(config, dtype, device: str):
    """A frozen student of `config` with random weights, built on `device` in `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(before)
    model.requires_grad_(False)
    return model.eval()


def tokenizer_for(folder: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.padding_side = "left"  # as student.model.load_student
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def jobs_for(run, tokenizer, k: int):
    """k (passage, training texts, seed) jobs: the bench's sample cycled, distinct seeds."""
    from loop.bench.inner import SAMPLE, load_sample
    from student.data import training_texts

    items = load_sample(SAMPLE, run, len(json.loads(SAMPLE.read_text())["self_edits"]))
    return [(p, training_texts(text, p.title, p.context, run.student.data), 2000 + n)
            for n, (p, text) in enumerate(items[n % len(items)] for n in range(k))]


WHEELS = ("hydra-core==1.3.*", "omegaconf==2.3.*", "antlr4-python3-runtime==4.9.3")


def pack(folder: Path) -> None:
    """What scripts/gpu_check.sh needs on a machine with only torch, transformers and peft:
    the bundled tokenizers (written so that transformers 4 reads them too: the fast-tokenizer
    class, the chat template inside the config) and pure-Python wheels of the configs'
    packages (antlr4's is built here: it is published only as a source archive)."""
    import shutil
    import subprocess

    from loop.core.assets import bundled_model_dir

    for name in sorted({tok for _, tok in STUDENTS.values()}):
        source, out = bundled_model_dir(name), folder / "tokenizers" / name
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "tokenizer.json", out / "tokenizer.json")
        config = json.loads((source / "tokenizer_config.json").read_text())
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        if (source / "chat_template.jinja").exists():
            config["chat_template"] = (source / "chat_template.jinja").read_text()
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "-w", str(folder / "wheels"), *WHEELS],
                   check=True)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"wrote {folder}: {size / 2**20:.1f} MiB (carry it with the repository)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loop.gpu_check", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Other arguments are config overrides applied to every student's preset "
               "(student.train.epochs=1, ...).")
    parser.add_argument("--archs", default=",".join(STUDENTS),
                        help=f"architectures, comma-separated (default: {','.join(STUDENTS)})")
    parser.add_argument("--k", default="8,32", help="batched adapters per pass (default 8,32)")
    parser.add_argument("--tiny", action="store_true", help="2 layers of width 64 (a CPU test)")
    parser.add_argument("--tokenizers", type=Path, default=None,
                        help="folder with the bundled tokenizers (default: gpu_assets/ if it "
                             "exists, else the bundled models' cache)")
    parser.add_argument("--budget-s", type=float, default=450,
                        help="skip work that would end past this many seconds (default 450)")
    parser.add_argument("--pack", type=Path, default=None, metavar="FOLDER",
                        help="write what a GPU machine without network needs to FOLDER "
                             "(make gpu-assets: gpu_assets/) and stop")
    args, overrides = parser.parse_known_args(argv)
    if args.pack is not None:
        pack(args.pack)
        return
    if bad := [o for o in overrides if o.startswith("-")]:
        parser.error(f"unknown option {bad[0]}")
    try:
        ks = sorted({int(k) for k in args.k.split(",")})
        if ks[0] < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--k takes positive integers separated by commas, got {args.k!r}")
    archs = [a for a in args.archs.split(",") if a]
    unknown = [a for a in archs if a not in STUDENTS]
    if unknown or not archs:
        parser.error(f"unknown architecture {unknown}: choose from {sorted(STUDENTS)}")
    try:
        check(archs, ks, args.tiny, args.tokenizers, args.budget_s, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def tokenizer_folder(given: Path | None, name: str) -> Path:
    if given is not None:
        return given / name
    carried = PROJECT_ROOT / "gpu_assets" / "tokenizers" / name
    if carried.exists():
        return carried
    from loop.core.assets import bundled_model_dir

    return bundled_model_dir(name)


def check(archs: list[str], ks: list[int], tiny: bool, tokenizers: Path | None,
          budget_s: float, overrides: list[str]) -> None:
    import torch

    from loop.core.measure import compose, matmul_peak

    tokenizer_dirs = {arch: tokenizer_folder(tokenizers, STUDENTS[arch][1]) for arch in archs}
    for folder in tokenizer_dirs.values():  # a user's error: before anything runs
        if not (folder / "tokenizer_config.json").exists():
            raise ConfigError(f"no tokenizer at {folder}: run `make gpu-assets` where the "
                              "bundled models are (it writes their tokenizers to gpu_assets/), "
                              "or pass --tokenizers <folder with smollm135m/ and qwen0.5b/>")
    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = matmul_peak(dtype, device, n=8192 if device == "cuda" else 512)
    print(f"device {name} ({device}), torch {torch.__version__}; dense {dtype} matmul peak "
          f"measured here: {peak / 1e3:.3g} TFLOP/s", flush=True)
    outcomes = correctness(archs[0], tiny, tokenizer_for(tokenizer_dirs[archs[0]]), device,
                           overrides)
    measured = 0
    for arch in archs:
        if time.perf_counter() - start > budget_s:
            print(f"\n{arch}: skipped: past the {budget_s:.0f} s budget")
            continue
        # answers generated (reward.metric=f1, SEAL's kind of reward): where sharing pays most
        run = compose([f"student={STUDENTS[arch][0]}", "tracking=none", "reward.metric=f1",
                       *overrides])
        try:
            complete, outcome = measure(arch, run, tokenizer_for(tokenizer_dirs[arch]), ks,
                                        tiny, dtype, device, peak, start + budget_s)
            measured += complete
            outcomes += [outcome] if outcome else []
        except (RuntimeError, MemoryError, ValueError) as e:  # out of memory, a config error
            print(f"{arch}: failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                  flush=True)
            outcomes.append(Outcome(f"{arch} speed and memory", "FAIL",
                                    f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
        if device == "cuda":
            torch.cuda.empty_cache()
    failed = [o for o in outcomes if o.status == "FAIL"]
    passed = [o for o in outcomes if o.status == "PASS"]
    print("\nchecks:")
    for o in outcomes:
        print(o.line())
    print(f"\ngpu_check: {'FAIL' if failed else 'PASS'} {len(passed)} passed {len(failed)} failed "
          f"of {len(outcomes)} checks; {measured} of {len(archs)} measured device={device} "
          f"dtype={str(dtype).removeprefix('torch.')} seconds={time.perf_counter() - start:.0f}")
    if failed:
        sys.exit(1)


def correctness(arch: str, tiny: bool, tokenizer, device: str, overrides: list[str]) -> list:
    """The checks of loop.core.gpu_checks on `arch`, in float32 and bfloat16, two self-edits
    each: one PASS/FAIL line each, printed as they finish."""
    import dataclasses
    import tempfile

    import torch

    from loop.bench.inner import run_path
    from loop.core.gpu_checks import Outcome, compare_paths, m_step, sampling
    from loop.core.measure import compose

    run = compose([f"student={STUDENTS[arch][0]}", "tracking=none", "reward.metric=f1",
                   *overrides])
    train = dataclasses.replace(run.student.train, max_adapters=2, method="lora")
    run = dataclasses.replace(run, student=dataclasses.replace(run.student, train=train))
    jobs = jobs_for(run, tokenizer, 2)
    out: list = []
    print(f"\ncorrectness on {arch}{' (tiny)' if tiny else ''}, random weights:", flush=True)
    for dtype in (torch.float32, torch.bfloat16):
        name, model, shown = str(dtype).removeprefix("torch."), None, len(out)
        try:
            model = random_student(architecture(arch, tiny), dtype, device)
            alone = run_path(model, tokenizer, jobs, run, "false", device)[2]
            together = run_path(model, tokenizer, jobs, run, "true", device)[2]
            out.append(compare_paths(alone, together, name))
            if dtype == torch.bfloat16 or device != "cuda":
                out.append(sampling(model, tokenizer, device))
                with tempfile.TemporaryDirectory() as tmp:
                    from pathlib import Path

                    out.append(m_step(model, tokenizer, run, Path(tmp)))
        except (RuntimeError, MemoryError, ValueError) as e:
            out.append(Outcome(f"correctness {name}", "FAIL",
                               f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
        for o in out[shown:]:
            print(o.line(), flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def measure(arch: str, run, tokenizer, ks: list[int], tiny: bool, dtype, device: str,
            peak: float, deadline: float):
    """Print one architecture's rows as they are measured; (whether every row was, the memory
    plan's check of its first batched row, or None)."""
    import dataclasses

    from loop.bench.inner import run_path
    from loop.core.gpu_checks import largest_pass, memory_plan
    from student.batched import pass_tokens

    t0 = time.perf_counter()
    model = random_student(architecture(arch, tiny), dtype, device)
    jobs = jobs_for(run, tokenizer, max(ks))
    params = sum(p.numel() for p in model.parameters())
    print(f"\n{arch}{' (tiny)' if tiny else ''}: {params / 1e6:.0f}M parameters, random "
          f"weights ({next(model.parameters()).dtype}), built in {time.perf_counter() - t0:.1f} "
          f"s; student={run.student.name}'s inner loop ({run.student.train.epochs} epochs, batch "
          f"{run.student.train.batch_size}, LoRA r={run.student.lora.r}, answers up to "
          f"{run.student.eval.max_new_tokens} tokens)", flush=True)

    def path(setting: str, k: int, count: bool = False):
        train = dataclasses.replace(run.student.train, max_adapters=k, method="lora")
        cfg = dataclasses.replace(run, student=dataclasses.replace(run.student, train=train))
        return run_path(model, tokenizer, jobs[:k], cfg, setting, device, count)

    t0 = time.perf_counter()
    path("true", 1)  # warm-up (kernels, caches), and what one self-edit costs here
    per_edit = time.perf_counter() - t0
    print(f"{'path':<16}{'k':>4}{'s':>9}{'self-edits/min':>16}{'speed-up':>10}{'peak GiB':>10}")
    sequential, complete, batched, plan_check = None, True, {}, None
    for setting, k in [("false", min(ks))] + [("true", k) for k in ks]:
        label = "one at a time" if setting == "false" else "batched"
        # no path is slower per self-edit than the warm-up's one at a time (batched k=1)
        if time.perf_counter() + per_edit * k > deadline:
            print(f"{label:<16}{k:>4}  skipped: past the budget", flush=True)
            complete = False
            continue
        base = resident(device)
        seconds, memory, _, _ = path(setting, k)
        if setting == "true" and plan_check is None:
            tokens = pass_tokens(run.student.train.pass_tokens, device)
            plan_check = memory_plan(
                architecture_values(arch, tiny), run, str(dtype).removeprefix("torch."), k,
                tokens, memory * 2**30 - base, largest_pass(model, tokenizer, jobs[:k], run,
                                                            tokens), device)
        per_min = 60 * k / seconds
        sequential = per_min if setting == "false" else sequential
        if setting == "false":
            per_edit = max(per_edit, seconds / k)
        else:
            batched[k] = seconds
        speedup = f"{per_min / sequential:.2f}x" if sequential else "-"
        print(f"{label:<16}{k:>4}{seconds:>9.2f}{per_min:>16.1f}{speedup:>10}{memory:>10.2f}",
              flush=True)
    k = min(batched, default=None)  # FLOPs of one batched pass (FlopCounterMode: slower)
    if k is not None and time.perf_counter() + 2 * batched[k] <= deadline:
        flops = sum(path("true", k, count=True)[3].flops.values())
        for k, seconds in batched.items():  # the sample cycles: k's work is k / min's
            achieved = flops * k / min(batched) / seconds
            print(f"batched k={k}: {achieved / 1e12:.3g} TFLOP/s = {achieved / 1e9 / peak:.2f} of "
                  "the measured matmul peak (FLOPs counted over the batched pass, padding "
                  "included)", flush=True)
    return complete, plan_check  # the model goes with this frame


def resident(device: str) -> float:
    """Bytes held now: CUDA memory allocated, or this process's RSS."""
    if device == "cuda":
        import torch

        return float(torch.cuda.memory_allocated())
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


if __name__ == "__main__":
    main()

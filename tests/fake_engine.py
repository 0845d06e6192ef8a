"""A simulated vLLM engine behind the fake server's vllm-compat mode, and its /metrics page.

Enough of vLLM's scheduler to test a client that sizes its in-flight window to the server:

* at most `max_num_seqs` sequences run; the rest wait (FIFO), so latency grows with the queue;
* a sequence is admitted only when its prompt fits the free KV cache (`kv_tokens`); while
  running it grows by one token a step, and when the cache overflows the newest running
  sequence is preempted: back to the head of the queue, to be recomputed from scratch;
* each step decodes one token for every prefilled sequence and prefills prompt chunks
  within `max_num_batched_tokens`; a step lasts `step_seconds` plus
  `prefill_seconds_per_token` for each prompt token prefilled in it.

So throughput grows with the requests in flight up to the capacity and then flattens,
as on a GPU. The /metrics page uses vLLM 0.26's names and Prometheus text format.
Standard library only, like tests/fake_openai.py, so the subprocess starts fast.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field


@dataclass
class EngineConfig:
    max_num_seqs: int = 256
    kv_tokens: int | None = None  # None: the KV cache never limits
    max_num_batched_tokens: int = 8192
    step_seconds: float = 0.01
    prefill_seconds_per_token: float = 0.0
    block_size: int = 16


@dataclass(eq=False)
class _Seq:
    prompt: int
    output: int
    done: asyncio.Future[None]
    prefilled: int = 0
    generated: int = 0

    @property
    def kv(self) -> int:
        return self.prefilled + self.generated


@dataclass
class EngineSim:
    config: EngineConfig
    waiting: deque[_Seq] = field(default_factory=deque)
    running: list[_Seq] = field(default_factory=list)
    preemptions: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    max_running: int = 0
    max_waiting: int = 0
    _loop_task: asyncio.Task[None] | None = None

    async def generate(self, prompt_tokens: int, output_tokens: int) -> None:
        """Returns when the sequence has produced all its tokens (its turn in the batch included)."""
        seq = _Seq(max(1, prompt_tokens), max(1, output_tokens), asyncio.get_running_loop().create_future())
        self.waiting.append(seq)
        self.max_waiting = max(self.max_waiting, len(self.waiting))
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())
        try:
            await seq.done
        except asyncio.CancelledError:  # the client went away: the engine drops the sequence
            if seq in self.waiting:
                self.waiting.remove(seq)
            if seq in self.running:
                self.running.remove(seq)
            raise

    async def aclose(self) -> None:
        """Stop stepping (the server is shutting down; its handlers are cancelled with it)."""
        task, self._loop_task = self._loop_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def kv_used(self) -> int:
        return sum(s.kv for s in self.running)

    def kv_usage(self) -> float:
        cap = self.config.kv_tokens
        return min(1.0, self.kv_used() / cap) if cap else 0.0

    async def _run(self) -> None:
        cfg = self.config
        while self.waiting or self.running:
            self._admit()
            budget = cfg.max_num_batched_tokens
            decoding = [s for s in self.running if s.prefilled >= s.prompt]
            budget -= len(decoding)
            prefilled = 0
            for s in self.running:
                if s.prefilled < s.prompt and budget > 0:
                    chunk = min(s.prompt - s.prefilled, budget)
                    s.prefilled += chunk
                    budget -= chunk
                    prefilled += chunk
            self.prompt_tokens += prefilled
            await asyncio.sleep(cfg.step_seconds + prefilled * cfg.prefill_seconds_per_token)
            for s in decoding:
                if s not in self.running:  # cancelled during the step
                    continue
                s.generated += 1
                self.generation_tokens += 1
                if s.generated >= s.output:
                    self.running.remove(s)
                    if not s.done.done():
                        s.done.set_result(None)
            self._preempt_overflow()

    def _admit(self) -> None:
        cap = self.config.kv_tokens
        used = self.kv_used()
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            head = self.waiting[0]
            # vLLM reserves the prompt's blocks on admission (prefill then fills them).
            if cap is not None and used + head.prompt + 1 > cap and self.running:
                break
            self.running.append(self.waiting.popleft())
            used += head.prompt + 1
        self.max_running = max(self.max_running, len(self.running))

    def _preempt_overflow(self) -> None:
        cap = self.config.kv_tokens
        if cap is None:
            return
        while len(self.running) > 1 and self.kv_used() > cap:
            victim = self.running.pop()  # the newest, as vLLM's recompute preemption picks
            victim.prefilled = victim.generated = 0
            self.waiting.appendleft(victim)
            self.preemptions += 1

    def metrics_text(self, model: str, running: int | None = None) -> str:
        """vLLM's Prometheus page (the scheduler gauges and token counters)."""
        cfg = self.config
        blocks = (cfg.kv_tokens or 0) // cfg.block_size
        return metrics_page(
            model,
            running=len(self.running) if running is None else running,
            waiting=len(self.waiting),
            kv_usage=self.kv_usage(),
            preemptions=self.preemptions,
            prompt_tokens=self.prompt_tokens,
            generation_tokens=self.generation_tokens,
            block_size=cfg.block_size,
            num_gpu_blocks=blocks,
        )


def metrics_page(
    model: str,
    running: int,
    waiting: int,
    kv_usage: float,
    preemptions: int = 0,
    prompt_tokens: int = 0,
    generation_tokens: int = 0,
    block_size: int = 16,
    num_gpu_blocks: int = 0,
) -> str:
    labels = f'engine="0",model_name="{model}"'
    rows = [
        ("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", running),
        ("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", waiting),
        ("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", kv_usage),
        ("vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine.", preemptions),
        ("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", prompt_tokens),
        ("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", generation_tokens),
    ]
    out: list[str] = []
    for name, typ, doc, value in rows:
        base = name.removesuffix("_total") if typ == "counter" else name
        out += [f"# HELP {base} {doc}", f"# TYPE {base} {typ}", f"{name}{{{labels}}} {float(value)!r}"]
    out += [
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
        "# TYPE vllm:cache_config_info gauge",
        f'vllm:cache_config_info{{block_size="{block_size}",engine="0",num_gpu_blocks="{num_gpu_blocks}"}} 1.0',
        # A histogram, as vLLM's page is mostly these: a reader must skip them.
        "# TYPE vllm:e2e_request_latency_seconds histogram",
        f'vllm:e2e_request_latency_seconds_bucket{{{labels},le="+Inf"}} 0.0',
    ]
    return "\n".join(out) + "\n"

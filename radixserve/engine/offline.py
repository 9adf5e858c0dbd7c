"""The offline API, shaped like SGLang's ``sgl.Engine``: ``Engine(**server_args).generate(...)``."""

from __future__ import annotations

import itertools
from dataclasses import replace

from radixserve.config import ServerArgs
from radixserve.core.sampling_params import InvalidParamError, SamplingParams, child_seed
from radixserve.engine.engine_core import EngineCore
from radixserve.engine.output_processor import RequestOutput
from radixserve.kernels import pdl


class _Collected:
    def __init__(self):
        self.text = ""
        self.output_ids: list[int] = []
        self.logprobs: list[tuple[float | None, int]] = []
        self.top_logprobs: list = []
        self.last: RequestOutput | None = None

    def add(self, output: RequestOutput) -> None:
        self.text += output.text_delta
        self.output_ids.extend(output.new_token_ids)
        self.logprobs.extend(zip(output.new_logprobs, output.new_token_ids))
        self.top_logprobs.extend(output.new_top_logprobs)
        self.last = output

    def to_dict(self, sampling: SamplingParams) -> dict:
        last = self.last
        meta = {
            "prompt_tokens": last.prompt_tokens,
            "completion_tokens": len(self.output_ids),
            "cached_tokens": last.cached_tokens,
            "finish_reason": last.finish_reason.to_dict(),
        }
        if sampling.return_logprob:
            meta["output_token_logprobs"] = self.logprobs
            if sampling.top_logprobs_num:
                meta["output_top_logprobs"] = self.top_logprobs
        return {"text": self.text, "output_ids": self.output_ids, "meta_info": meta}


class Engine:
    """In-process engine. ``Engine(model_path=None)`` loads the embedded SmolLM2-135M-Instruct."""

    def __init__(self, model_path: str | None = None, **server_args):
        self.args = ServerArgs.from_kwargs(model_path=model_path, **server_args)
        self.core = EngineCore(self.args)
        self.tokenizer = self.core.tokenizer
        self._ids = itertools.count()

    def generate(
        self,
        prompt: str | list[str] | None = None,
        sampling_params: dict | list[dict] | None = None,
        input_ids: list[int] | list[list[int]] | None = None,
        return_logprob: bool = False,
        top_logprobs_num: int = 0,
        extra_key: str | None = None,
    ) -> dict | list[dict]:
        """Generate for one prompt (returns a dict; a list of n dicts when n > 1) or a batch (a list)."""
        prompts, single = self._prompt_ids(prompt, input_ids)
        params = self._sampling_list(sampling_params, len(prompts), return_logprob, top_logprobs_num)
        jobs = []  # (request_id, sampling)
        try:
            for ids, sampling in zip(prompts, params):
                for child in range(sampling.n):
                    child_params = _child_sampling(sampling, child)
                    request_id = f"offline-{next(self._ids)}"
                    self.core.add_request(request_id, ids, child_params, extra_key, stream=False)
                    jobs.append((request_id, child_params))
        except InvalidParamError:
            for request_id, _ in jobs:
                self.core.abort(request_id)
            raise
        results = self._run({request_id for request_id, _ in jobs})
        for collected in results.values():
            reason = collected.last.finish_reason
            if reason.kind == "error" and reason.param:
                raise InvalidParamError(reason.message, reason.param)
        dicts = [results[request_id].to_dict(sampling) for request_id, sampling in jobs]
        if single:
            return dicts[0] if len(dicts) == 1 else dicts
        return dicts

    def _run(self, request_ids: set[str]) -> dict[str, _Collected]:
        collected = {request_id: _Collected() for request_id in request_ids}
        pending = set(request_ids)
        while pending:
            for output in self.core.step():
                if output.request_id in collected:
                    collected[output.request_id].add(output)
                    if output.finished:
                        pending.discard(output.request_id)
        return collected

    def _prompt_ids(self, prompt, input_ids) -> tuple[list[list[int]], bool]:
        if (prompt is None) == (input_ids is None):
            raise InvalidParamError("pass exactly one of prompt or input_ids", "prompt")
        if prompt is not None:
            if isinstance(prompt, str):
                return [self.tokenizer.encode(prompt)], True
            return [self.tokenizer.encode(p) for p in prompt], False
        if input_ids and isinstance(input_ids[0], int):
            return [list(input_ids)], True
        return [list(ids) for ids in input_ids], False

    @staticmethod
    def _sampling_list(sampling_params, count: int, return_logprob: bool, top_logprobs_num: int):
        raw = sampling_params if isinstance(sampling_params, list) else [sampling_params] * count
        if len(raw) != count:
            raise InvalidParamError("sampling_params must be one dict or one per prompt", "sampling_params")
        extra = {"return_logprob": return_logprob or top_logprobs_num > 0, "top_logprobs_num": top_logprobs_num}
        return [SamplingParams.from_dict({**extra, **(p or {})}) for p in raw]

    def flush_cache(self) -> bool:
        return self.core.flush_cache()

    def shutdown(self) -> None:
        self.core = None
        pdl.enable(False)  # launches outside an engine (benches, tests) go back to plain ones

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()


def _child_sampling(sampling: SamplingParams, index: int) -> SamplingParams:
    """The i-th of n samples: its own seed (when seeded) so the n outputs differ reproducibly."""
    return replace(sampling, n=1, seed=child_seed(sampling.seed, index))

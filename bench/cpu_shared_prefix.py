"""CPU benchmark: 32 prompts sharing a ~300-token system prompt, 64 new tokens each, greedy.

radixserve (radix cache on, and off for reference) against Hugging Face ``generate`` on the same
weights (the embedded SmolLM2-135M-Instruct, float32), side by side in one run.

    .venv/bin/python bench/cpu_shared_prefix.py [--num-prompts 32] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from radixserve import Engine
from radixserve.model.default_model import ensure_default_model

SYSTEM_PROMPT = (
    "You are a meticulous support assistant for a company that sells hiking and camping gear. "
    "Answer in two sentences at most. Always be polite, never invent prices, and when you do not know "
    "an answer say so and suggest contacting the support team. The catalogue covers tents (one to six "
    "persons, three- and four-season), sleeping bags rated from minus twenty to plus ten degrees, "
    "sleeping pads, stoves that burn canister gas, white gas or wood, water filters and purification "
    "tablets, backpacks from twenty to eighty litres, trekking poles, headlamps, rain gear, insulated "
    "jackets, base layers, socks, gaiters, boots and trail runners, first-aid kits, navigation tools "
    "including maps, compasses and satellite messengers, and a small range of freeze-dried meals. "
    "Shipping is free above fifty euros inside the European Union and takes three to five working days. "
    "Returns are accepted within sixty days if the item is unused and in its original packaging; used "
    "items can be sent for repair under the two-year warranty. Store opening hours are nine to seven "
    "on weekdays and ten to five on Saturdays; stores are closed on Sundays and public holidays. "
    "Loyalty members earn one point per euro and get early access to seasonal sales."
)
QUESTIONS = [
    "Which tent should I pick for a winter trip?",
    "How long does shipping take?",
    "Can I return used boots?",
    "Do you sell satellite messengers?",
    "What are the store hours on Saturday?",
    "Is shipping free?",
    "Which sleeping bag for summer?",
    "Do you have water filters?",
    "How do loyalty points work?",
    "What stove works at altitude?",
    "Can I repair a broken pole?",
    "Do you sell maps of the Alps?",
    "What backpack size for a weekend?",
    "Are freeze-dried meals vegetarian?",
    "Do you open on Sundays?",
    "Which headlamp is brightest?",
]


def build_prompts(tokenizer, num_prompts: int) -> list[str]:
    prompts = []
    for i in range(num_prompts):
        question = f"{QUESTIONS[i % len(QUESTIONS)]} (ticket {i})"
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
        prompts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    return prompts


def run_radixserve(prompts: list[str], new_tokens: int, disable_cache: bool, repeats: int) -> dict:
    """Median of ``repeats`` runs; the cache is flushed before each so every run starts cold."""
    engine = Engine(disable_radix_cache=disable_cache, max_total_tokens=32768)
    params = {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
    engine.generate(prompts[0][:64], {"max_new_tokens": 2})  # warm-up
    times = []
    for _ in range(repeats):
        engine.flush_cache()
        start = time.perf_counter()
        outs = engine.generate(prompts, params)
        times.append(time.perf_counter() - start)
    engine.shutdown()
    return {
        "seconds": statistics.median(times),
        "output_tokens": sum(o["meta_info"]["completion_tokens"] for o in outs),
        "prompt_tokens": sum(o["meta_info"]["prompt_tokens"] for o in outs),
        "cached_tokens": sum(o["meta_info"]["cached_tokens"] for o in outs),
        "texts": [o["text"] for o in outs],
    }


def run_hf(model_dir: Path, prompts: list[str], new_tokens: int, repeats: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        model.generate(**tokenizer(prompts[:1], return_tensors="pt", add_special_tokens=False), max_new_tokens=2)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(
                **batch,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            times.append(time.perf_counter() - start)
    new = out[:, batch["input_ids"].shape[1] :]
    return {
        "seconds": statistics.median(times),
        "output_tokens": int(new.numel()),
        "prompt_tokens": int(batch["attention_mask"].sum()),
    }


def measure_machine() -> dict:
    """Measured copy bandwidth (bytes/s) and float32 GEMM throughput (FLOP/s) of this CPU."""
    src = torch.ones(64 * 2**20)  # 256 MiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    start = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    bandwidth = 5 * 2 * src.numel() * 4 / (time.perf_counter() - start)  # read + write
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(5):
        torch.mm(a, b)
    flops = 5 * 2 * 2048**3 / (time.perf_counter() - start)
    return {"bandwidth": bandwidth, "flops": flops}


def roofline(machine: dict, num_params: int, unique_prompt_tokens: int, num_prompts: int, new_tokens: int) -> float:
    """Best possible output tok/s: prefill of the unique prompt tokens at peak FLOP/s, then every decode
    step bound by reading the float32 weights once (or by its FLOPs, whichever is slower)."""
    prefill_s = 2 * num_params * unique_prompt_tokens / machine["flops"]
    step_s = max(4 * num_params / machine["bandwidth"], 2 * num_params * num_prompts / machine["flops"])
    return num_prompts * new_tokens / (prefill_s + new_tokens * step_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="runs per engine; the median is reported")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    model_dir = ensure_default_model()
    from radixserve.tokenizer.tokenizer import Tokenizer

    prompts = build_prompts(Tokenizer.from_path(model_dir), args.num_prompts)
    rows = {
        "radixserve (radix cache)": run_radixserve(prompts, args.new_tokens, False, args.repeats),
        "radixserve (cache off)": run_radixserve(prompts, args.new_tokens, True, args.repeats),
    }
    if not args.skip_hf:
        rows["HF transformers generate"] = run_hf(model_dir, prompts, args.new_tokens, args.repeats)
    machine = measure_machine()
    cached = rows["radixserve (radix cache)"]
    unique = cached["prompt_tokens"] - cached["cached_tokens"]
    best = roofline(machine, count_params(model_dir), unique, args.num_prompts, args.new_tokens)
    print_table(rows, args)
    print(
        f"roofline: {best:.1f} out tok/s (copy {machine['bandwidth'] / 1e9:.1f} GB/s, "
        f"fp32 GEMM {machine['flops'] / 1e9:.0f} GFLOP/s, {unique} unique prompt tokens); "
        f"radixserve reaches {100 * _tok_s(cached) / best:.0f}% of it"
    )


def count_params(model_dir: Path) -> int:
    """Weights read by one forward step: every stored tensor, plus the LM head again when it is tied."""
    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text())
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        total = sum(_numel(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118 (safe_open is not iterable)
    if config.get("tie_word_embeddings"):
        total += config["vocab_size"] * config["hidden_size"]
    return total


def _numel(shape) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def _tok_s(row: dict) -> float:
    return row["output_tokens"] / row["seconds"]


def print_table(rows: dict, args) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(
        f"\n{args.num_prompts} prompts x {args.new_tokens} new tokens, shared system prompt, greedy, float32, "
        f"median of {args.repeats} runs"
    )
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"commit {commit or '-'}, {datetime.date.today()}"
    )
    hf = rows.get("HF transformers generate")
    print(f"{'engine':28} {'seconds':>8} {'prompt tok':>10} {'cached':>8} {'out tok/s':>10} {'vs HF':>6}")
    for name, row in rows.items():
        tok_s = row["output_tokens"] / row["seconds"]
        ratio = f"{tok_s / (hf['output_tokens'] / hf['seconds']):.2f}x" if hf else "-"
        print(
            f"{name:28} {row['seconds']:8.2f} {row['prompt_tokens']:10d} {row.get('cached_tokens', 0):8d} "
            f"{tok_s:10.1f} {ratio:>6}"
        )
    summary = {name: round(r["output_tokens"] / r["seconds"], 1) for name, r in rows.items()}
    print(json.dumps({"output_tok_s": summary}))


if __name__ == "__main__":
    main()

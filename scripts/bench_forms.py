"""What each deployed form costs and gives on the embedded SmolLM2-135M with a LoRA adapter (CPU).

For the README's "Deployed forms" table: per form, the latency of the probe (p50, p95), output tokens, the
seconds to enter and leave the form, the memory it allocates beside the model, and whether the model's
weights came back bit for bit. Forms are measured in turn in one process, each twice, interleaved (ABAB), so
that drift on a shared machine does not pick the winner.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python scripts/bench_forms.py [--json OUT] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ftcallback._embedded import load_model_and_tokenizer
from ftcallback._forms import measure_in_form
from ftcallback._measure import measure

PROMPTS = [
    "What is the capital of France?",
    "Explain what a KV cache does in one sentence.",
    "Name three primary colours.",
]
FORMS = ("as trained (unmerged LoRA)", "merged", "bf16", "int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from peft import LoraConfig, get_peft_model

    started = time.perf_counter()
    model, tok = load_model_and_tokenizer("smollm2")
    torch.manual_seed(0)
    # r=16 on every linear layer, B not zero: the adapter a fine-tune leaves behind.
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(model, config)
    print(f"loaded in {time.perf_counter() - started:.1f} s")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def run(served: object) -> object:
        return measure(
            served, tok, PROMPTS, max_new_tokens=args.max_new_tokens, warmup=1, repeats=2,
            apply_chat_template=True,
        )

    results: dict[str, list[dict[str, float]]] = {form: [] for form in FORMS}
    for _ in range(args.rounds):
        for form in FORMS:
            m = run(model) if form == FORMS[0] else measure_in_form(model, form, run)
            results[form].append(
                {
                    "latency_ms_p50": m.latency_ms.p50,
                    "latency_ms_p95": m.latency_ms.p95,
                    "output_tokens_mean": m.output_tokens.mean,
                    "form_setup_s": m.environment.get("form_setup_s", 0.0),
                    "form_memory_mib": m.environment.get("form_memory_bytes", 0) / 2**20,
                }
            )
    exact = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    params = sum(p.numel() for p in model.parameters())
    print(f"SmolLM2-135M + LoRA r=16 all-linear ({params / 1e6:.1f}M parameters), {len(PROMPTS)} prompts, "
          f"max_new_tokens {args.max_new_tokens}, 1 thread; weights restored bit for bit: {exact}")
    print(f"{'form':<28}{'p50 ms':>9}{'p95 ms':>9}{'tokens':>8}{'setup s':>9}{'extra MiB':>11}")
    table = {}
    for form, rows in results.items():
        agg = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        table[form] = agg
        print(f"{form:<28}{agg['latency_ms_p50']:>9.0f}{agg['latency_ms_p95']:>9.0f}"
              f"{agg['output_tokens_mean']:>8.1f}{agg['form_setup_s']:>9.2f}{agg['form_memory_mib']:>11.0f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"forms": table, "restored_exactly": exact, "parameters": params}, fh, indent=2)


if __name__ == "__main__":
    main()

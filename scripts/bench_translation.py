"""Throughput of the translation workload: training tokens/s and beam-search sentences/s.

    python scripts/bench_translation.py                 # CPU: tiny and base
    python scripts/bench_translation.py --quick         # CPU: tiny training, base decoding
    python scripts/bench_translation.py --device cuda   # GPU, bf16: base and the 375M paper model

Training: one step is forward, label-smoothed loss, backward and an Adam step on random
tokens (source and target ``--length`` tokens each); tokens/s counts target tokens. Beam search:
beam 4, length penalty 0.6, every hypothesis forced to 64 tokens (EOS masked before 64, forced
at 64), with and without the incremental key/value cache. The floor, a >= 3x speedup from the
cache, is checked on base and paper: the tiny model's steps cost dispatch overhead rather than
arithmetic, so recomputing a 64-token prefix is nearly free there. CPU runs use ``--threads``
(default 1: on shared machines, a second thread that must wait for a busy core makes small
models many times slower) and are timed in CPU seconds of this process; GPU runs in wall-clock
seconds. Decoding small batches on CPU is bound by reading the weights once per step, so the
cache's advantage grows with the number of sentences decoded together.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from graftbench.models.decoding import beam_search
from graftbench.models.transformer import Transformer, label_smoothed_loss, transformer_config

OUTPUT_LENGTH = 64
SPEEDUP_FLOOR = 3.0


def precision(device: str) -> AbstractContextManager:
    """bf16 autocast on GPU, float32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()


def timed(run: Callable[[], None], device: str, warmup: int, repeats: int) -> float:
    """Seconds per call after ``warmup`` calls: wall-clock on GPU; on CPU this process's CPU
    time, which other processes sharing the cores do not inflate."""
    clock = time.perf_counter if device == "cuda" else time.process_time
    for _ in range(warmup):
        run()
    if device == "cuda":
        torch.cuda.synchronize()
    start = clock()
    for _ in range(repeats):
        run()
    if device == "cuda":
        torch.cuda.synchronize()
    return (clock() - start) / repeats


def random_tokens(config, sentences: int, length: int, device: str) -> torch.Tensor:
    tokens = torch.randint(4, config.vocab_size, (sentences, length), device=device)
    tokens[:, -1] = config.eos_id
    return tokens


def train_tokens_per_s(
    name: str, device: str, sentences: int, length: int, steps: int
) -> tuple[float, int]:
    config = transformer_config(name)
    model = Transformer(config).to(device).train()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=1e-4, foreach=device == "cpu", fused=device == "cuda"
    )
    src = random_tokens(config, sentences, length, device)
    tgt = random_tokens(config, sentences, length + 1, device)
    tgt[:, 0] = config.bos_id

    def step() -> None:
        with precision(device):
            logits = model(src, tgt[:, :-1])
        loss, count = label_smoothed_loss(logits, tgt[:, 1:], config.pad_id)
        optimizer.zero_grad(set_to_none=True)
        (loss / count).backward()
        optimizer.step()

    seconds = timed(step, device, warmup=2, repeats=steps)
    return sentences * length / seconds, model.param_count()


def beam_sentences_per_s(
    name: str, device: str, sentences: int, src_length: int, use_cache: bool
) -> float:
    config = transformer_config(name)
    torch.manual_seed(0)
    model = Transformer(config).to(device).eval()
    src = random_tokens(config, sentences, src_length, device)

    def decode() -> None:
        with precision(device):
            outputs = beam_search(
                model,
                src,
                beam_size=4,
                length_penalty=0.6,
                max_len_ratio=0.0,
                max_len_offset=OUTPUT_LENGTH,
                min_len=OUTPUT_LENGTH,
                use_cache=use_cache,
            )
        assert all(len(out) == OUTPUT_LENGTH for out in outputs)

    return sentences / timed(decode, device, warmup=1 if device == "cuda" else 0, repeats=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer steps and models")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch)")
    parser.add_argument("--length", type=int, default=32, help="source/target tokens per sentence")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    # (config, sentences per batch, timed steps) and (config, sentences decoded)
    if args.device == "cpu":
        training = [("tiny", 64, 5)] if args.quick else [("tiny", 64, 20), ("base", 16, 5)]
        decoding = [("base", 4)] if args.quick else [("tiny", 8), ("base", 8)]
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        training = [("paper", 128, 5)] if args.quick else [("base", 256, 20), ("paper", 128, 20)]
        decoding = [("paper", 16)] if args.quick else [("base", 32), ("paper", 32)]
    if args.device == "cuda":
        where, per = f"cuda ({torch.cuda.get_device_name()}, bf16)", "s"
    else:
        where, per = f"cpu ({args.threads} thread(s))", "CPU-s"

    print(f"training, {where}, {args.length} tokens per side, target tokens per {per}")
    print(f"  {'config':8} {'parameters':>12} {'batch':>12} {'tokens':>10}")
    for name, sentences, steps in training:
        rate, params = train_tokens_per_s(name, args.device, sentences, args.length, steps)
        batch = f"{sentences}x{args.length}"
        print(f"  {name:8} {params:>12,} {batch:>12} {rate:>10,.0f}", flush=True)

    print(f"\nbeam search (beam 4, output length {OUTPUT_LENGTH}), {where}, sentences per {per}")
    print(f"  {'config':8} {'sentences':>9} {'cached':>8} {'recomputed':>10} {'speedup':>8}")
    for name, sentences in decoding:
        cached = beam_sentences_per_s(name, args.device, sentences, args.length, use_cache=True)
        full = beam_sentences_per_s(name, args.device, sentences, args.length, use_cache=False)
        speedup = cached / full
        if name == "tiny":  # d_model 32: per-step dispatch overhead, not compute, dominates
            verdict = "(tiny: overhead-bound, no floor)"
        elif speedup >= SPEEDUP_FLOOR:
            verdict = f"ok (floor {SPEEDUP_FLOOR:.0f}x)"
        else:
            verdict = f"BELOW the {SPEEDUP_FLOOR:.0f}x floor"
        print(
            f"  {name:8} {sentences:>9} {cached:>8.2f} {full:>10.2f} {speedup:>7.1f}x  {verdict}",
            flush=True,
        )


if __name__ == "__main__":
    main()

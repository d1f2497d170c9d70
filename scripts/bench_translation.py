"""Throughput of the translation workload: training tokens/s and beam-search sentences/s.

    python scripts/bench_translation.py                 # CPU: tiny and base
    python scripts/bench_translation.py --quick         # CPU: tiny training, base decoding
    python scripts/bench_translation.py --device cuda   # GPU, bf16: base and the 375M paper model

Training: the engine (``graftbench train``) on a synthetic parallel corpus of random words,
prepared like WMT14 (SentencePiece, token arrays), with Adam; the figure is the engine's own
logged throughput (target tokens per wall-clock second) over ``steps`` steps after as many
warm-up steps. Beam search:
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
import random
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from graftbench import config, rundir
from graftbench.data.translation import PrepareSettings, TranslationData, prepare
from graftbench.models.decoding import beam_search
from graftbench.models.transformer import Transformer, transformer_config
from graftbench.record import Exit
from graftbench.train import runner

OUTPUT_LENGTH = 64
MODELS = {"tiny": "transformer_tiny", "base": "transformer_base", "paper": "transformer_wmt14"}
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


def synthetic_corpus(root: Path, sentences: int, words: int) -> Path:
    """Prepared parallel data of random "words" (about ``words`` pieces a sentence)."""
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choices(letters, k=rng.randint(2, 7))) for _ in range(3000)]
    files = {}
    for split, count in (("train", sentences), ("valid", 16), ("test", 16)):
        src = [" ".join(rng.choices(vocabulary, k=words)) for _ in range(count)]
        files[split] = (root / f"{split}.en", root / f"{split}.fr")
        files[split][0].write_text("".join(line + "\n" for line in src))
        files[split][1].write_text("".join(line[::-1] + "\n" for line in src))
    settings = PrepareSettings(vocab_size=1000, max_len=8 * words, spm_threads=1)
    prepare(root / "prepared", files, settings=settings)
    return root / "prepared"


def train_tokens_per_s(
    name: str, device: str, sentences: int, steps: int, corpus: Path, root: Path
) -> tuple[float, int]:
    """Target tokens/s the engine logged over steps (steps, 2·steps]; and the model's size."""
    cfg = config.compose(
        [
            "experiment=paper_wmt14",
            f"data.root={corpus}",
            f"model={MODELS[name]}",
            "magnitude=adam",
            "schedule=constant",
            f"trainer.device={device}",
            f"trainer.precision={'bf16' if device == 'cuda' else 'fp32'}",
            f"trainer.batch_size={sentences}",
            "trainer.per_device_batch_size=null",
            "trainer.epochs=1000",
            f"trainer.max_steps={2 * steps}",
            f"trainer.log_every_steps={steps}",
            "trainer.layer_log_every_steps=0",
            "trainer.checkpoint_every_steps=0",
            "trainer.progress=never",
            "data.valid_bleu_sentences=4",
            f"results_dir={root / name}",
        ]
    )
    run_dir = runner.prepare_run(cfg)
    if runner.execute(run_dir, cfg) != Exit.DONE:
        raise SystemExit(f"the engine run failed: see {run_dir}")
    windows = [r for r in rundir.read_jsonl(run_dir / rundir.METRICS) if r["kind"] == "train"]
    vocab = TranslationData(corpus).vocab.size
    return windows[1]["samples_per_s"], transformer_config(name, vocab_size=vocab).param_count()


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

    print(
        f"training (the engine, adam), {where}, ~{args.length} tokens per side, "
        "target tokens per wall-clock s"
    )
    print(f"  {'config':8} {'parameters':>12} {'sentences':>10} {'tokens/s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = synthetic_corpus(Path(tmp), 4000, args.length)
        for name, sentences, steps in training:
            rate, params = train_tokens_per_s(
                name, args.device, sentences, steps, corpus, Path(tmp) / "runs"
            )
            print(f"  {name:8} {params:>12,} {sentences:>10} {rate:>10,.0f}", flush=True)

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

"""Prepare WMT14 en-fr (or any aligned text files) for the translation workload.

From Hugging Face (needs `pip install datasets` and network; validation = newstest2013,
test = newstest2014):

    python scripts/prepare_wmt14.py data/wmt14_en_fr --hf

From local aligned files (one sentence per line, same line count on both sides):

    python scripts/prepare_wmt14.py data/wmt14_en_fr \\
        --train train.en train.fr --valid newstest2013.en newstest2013.fr \\
        --test newstest2014.en newstest2014.fr

Trains a shared SentencePiece model on the training text, encodes every split into
memory-mapped token arrays and writes manifest.json. Running it again with the same inputs and
settings does nothing; a directory holding anything else is never overwritten.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from graftbench.data.translation import PrepareSettings, prepare, prepare_from_hf
from graftbench.errors import UserError

DEFAULTS = PrepareSettings()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("out", type=Path, help="output directory (new or empty)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf", action="store_true", help="download from Hugging Face")
    source.add_argument("--train", nargs=2, type=Path, metavar=("SRC", "TGT"))
    parser.add_argument("--valid", nargs=2, type=Path, metavar=("SRC", "TGT"))
    parser.add_argument("--test", nargs=2, type=Path, metavar=("SRC", "TGT"))
    parser.add_argument(
        "--split",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "SRC", "TGT"),
        help="another evaluation split (repeatable)",
    )
    parser.add_argument("--hf-dataset", default="wmt/wmt14")
    parser.add_argument("--hf-config", default="fr-en")
    parser.add_argument("--src-lang", default="en")
    parser.add_argument("--tgt-lang", default="fr")
    parser.add_argument("--vocab-size", type=int, default=DEFAULTS.vocab_size)
    parser.add_argument("--model-type", default=DEFAULTS.model_type)
    parser.add_argument("--character-coverage", type=float, default=DEFAULTS.character_coverage)
    parser.add_argument(
        "--input-sentence-size",
        type=int,
        default=DEFAULTS.input_sentence_size,
        help="lines sampled to train SentencePiece (0: all)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--spm-threads", type=int, default=DEFAULTS.spm_threads)
    parser.add_argument(
        "--max-len",
        type=int,
        default=DEFAULTS.max_len,
        help="drop training pairs with a side longer than this many pieces (0: keep all)",
    )
    parser.add_argument(
        "--max-ratio",
        type=float,
        default=DEFAULTS.max_ratio,
        help="drop training pairs whose longer side has more than this times the pieces of "
        "the shorter (0: keep all)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = PrepareSettings(
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
        input_sentence_size=args.input_sentence_size,
        seed=args.seed,
        spm_threads=args.spm_threads,
        max_len=args.max_len or None,
        max_ratio=args.max_ratio or None,
    )
    languages = {"src_lang": args.src_lang, "tgt_lang": args.tgt_lang}
    try:
        if args.hf:
            manifest = prepare_from_hf(
                args.out,
                dataset=args.hf_dataset,
                config=args.hf_config,
                settings=settings,
                **languages,
            )
        else:
            files = {"train": tuple(args.train)}
            for name in ("valid", "test"):
                if getattr(args, name):
                    files[name] = tuple(getattr(args, name))
            files |= {name: (Path(src), Path(tgt)) for name, src, tgt in args.split}
            manifest = prepare(args.out, files, settings=settings, **languages)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(f"{args.out}: vocabulary {manifest['vocab']['size']} pieces ({manifest['dtype']})")
    for name, split in manifest["splits"].items():
        tokens = ", ".join(f"{lang} {n:,}" for lang, n in split["tokens"].items())
        dropped = split.get("dropped")
        note = f"; dropped {dropped}" if dropped else ""
        print(f"  {name}: {split['sentences']:,} pairs, tokens {tokens}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

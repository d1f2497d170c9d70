"""The translation workload through the engine: prepared text files, a grafted Transformer,
beam search and sacrebleu at the end."""

from __future__ import annotations

from graftbench import config, rundir
from graftbench.data.translation import PrepareSettings, prepare
from graftbench.train import runner
from tests.text_helpers import write_corpus


def test_translation_trains_grafted_and_reports_validation_and_test_bleu(tmp_path):
    files = write_corpus(tmp_path)
    settings = PrepareSettings(vocab_size=51, max_len=60, max_ratio=3.0, spm_threads=1)
    prepare(tmp_path / "data", files, settings=settings)
    cfg = config.compose(
        [
            "experiment=paper_wmt14",
            f"data.root={tmp_path / 'data'}",
            "model=transformer_tiny",
            "magnitude=adam",
            "direction=sgd",
            "magnitude.lr=5e-3",
            "magnitude.betas=[0.9,0.98]",
            "schedule=constant",
            "schedule.warmup_steps=0",  # the recipe warms up for 4000 steps
            "trainer.precision=fp32",
            "trainer.device=cpu",
            "trainer.batch_size=64",
            "trainer.per_device_batch_size=null",
            "trainer.epochs=28",
            "trainer.eval_every_epochs=1000",
            "trainer.average_last=3",
            "data.valid_bleu_sentences=30",
            "data.max_len_ratio=1.5",
            "data.max_len_offset=5",
            f"results_dir={tmp_path / 'results'}",
        ]
    )
    assert cfg.trainer.batch_size == 64 and cfg.data.task == "translation"
    run_dir = runner.prepare_run(cfg)
    assert runner.execute(run_dir, cfg) == 0
    summary = rundir.read_json(run_dir / rundir.SUMMARY)
    total = rundir.read_json(run_dir / rundir.RUN)["total_steps"]
    assert summary["steps"] == total and total % 28 == 0  # length buckets: ≥ 600/64 a epoch
    final = summary["final"]
    assert final["test_bleu"] > 20 and final["bleu"] > 20, final  # learned the dictionary
    assert final["ppl"] < 5
    assert summary["notes"]["bleu_signature"].startswith("nrefs:1|case:mixed")
    assert summary["notes"]["averaged_checkpoints"] == 3
    assert len(list((run_dir / rundir.CKPT).glob("epoch_*.pt"))) == 3
    train = [r for r in rundir.read_jsonl(run_dir / rundir.METRICS) if r["kind"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] / 2
    assert train[0]["graft"]["ratio_max"] > 0

"""The precision policy (allspark.precision, METHODS.md 5): what `auto` picks on each device, the run's first line
and config.yaml, a resumed run's precision, and the numbers that stay fp32 under bf16."""
import copy
import json

import pytest
import torch
import yaml

import allspark.precision as precision
from allspark.engine.recipes import confident_share, is_confident, pseudo_label_loss
from allspark.precision import Precision, autocast, resolve_amp

CPU = torch.device("cpu")


def cpu_reports(monkeypatch, amx: bool, avx512_bf16: bool) -> None:
    """This CPU as torch's probes would report one with (or without) the bf16 instructions."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)


@pytest.mark.parametrize("amx,avx512,mode,why", [
    (False, False, "off", "no AMX-BF16 or AVX512-BF16"),
    (False, True, "bf16", "the CPU has AVX512-BF16"),
    (True, True, "bf16", "the CPU has AMX-BF16")])
def test_auto_is_bf16_only_on_a_cpu_with_bf16_instructions(monkeypatch, amx, avx512, mode, why):
    cpu_reports(monkeypatch, amx, avx512)
    chosen = resolve_amp("auto", CPU)
    assert chosen.mode == mode and why in chosen.reason
    assert chosen.line().startswith(f"precision: {'fp32' if mode == 'off' else 'bf16'} (auto: ")


def test_without_torch_probes_the_cpuinfo_flags_decide(monkeypatch):
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.delattr(torch.cpu, probe)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx512f", "avx512bw"})
    assert resolve_amp("auto", CPU).mode == "off"
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert resolve_amp("auto", CPU) == Precision("bf16", "auto: the CPU has AVX512-BF16")


def test_auto_on_cuda_asks_for_native_bf16(monkeypatch):
    asked = []

    def supported(including_emulation=True):
        asked.append(including_emulation)
        return False

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert resolve_amp("auto", torch.device("cuda")).mode == "off" and asked == [False]  # emulated bf16 is slow
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_amp("auto", torch.device("cuda")).mode == "bf16"


def test_a_forced_mode_stays_and_a_resumed_run_keeps_its_own(monkeypatch):
    cpu_reports(monkeypatch, False, False)
    forced = resolve_amp("bf16", CPU, key="--amp")
    assert forced.mode == "bf16" and forced.reason.startswith("--amp=bf16; this CPU has no bf16 instructions")
    assert resolve_amp("off", CPU) == Precision("off", "train.amp=off")
    assert resolve_amp("auto", CPU, saved="bf16").mode == "bf16"  # the run started in bf16 continues in it
    cpu_reports(monkeypatch, False, True)
    assert resolve_amp("auto", CPU, saved="off").mode == "off"
    with pytest.raises(ValueError, match="resolve_amp"):
        autocast(CPU, "auto")


def bf16_crossing_logits() -> torch.Tensor:
    """(1, 2, 1, 1) bf16 logits whose top probability is 0.9505 in fp32 but 0.9492 once softmax runs in bf16 (its
    spacing near 1 is 2^-8): a pixel bf16 would round from above the 0.95 threshold to below it."""
    logits = torch.tensor([0.0, 2.953125], dtype=torch.bfloat16).view(1, 2, 1, 1)
    assert logits.float().softmax(1).amax().item() > 0.95 > logits.softmax(1).amax().item()
    return logits


def test_confidence_and_threshold_are_fp32_under_bf16_autocast():
    teacher = bf16_crossing_logits()
    valid = torch.ones(1, 1, 1, dtype=torch.bool)
    student = torch.tensor([1.0, 0.0], dtype=torch.bfloat16).view(1, 2, 1, 1)
    with autocast(CPU, "bf16"):
        assert is_confident(teacher, 0.95).all()
        assert confident_share(teacher, valid, 0.95).item() == 1.0
        loss = pseudo_label_loss(student, teacher, valid, 0.95)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(student.float(), teacher.argmax(1)).item())


def test_losses_and_probabilities_are_fp32_from_bf16_logits():
    from allspark.engine.losses import labeled_loss
    from allspark.predict.windows import predict_probs
    from allspark.suggest.scoring import probs_and_features

    logits = bf16_crossing_logits()
    target = torch.ones(1, 1, 1, dtype=torch.long)
    with autocast(CPU, "bf16"):
        for kind in ("ce", "ohem"):
            assert labeled_loss(logits, target, kind, 0.7, 1).dtype == torch.float32
        probs = predict_probs(lambda images: logits, torch.zeros(1, 3, 1, 1))
        hook = type("Hook", (), {"value": torch.zeros(1, 4)})()
        scores, _ = probs_and_features(lambda images: logits, torch.zeros(1, 3, 1, 1), hook)
    expected = logits.float().softmax(1)
    assert probs.dtype == torch.float32 and torch.equal(probs, expected)  # eval and predict
    assert scores.dtype == "float32" and (scores.max() > 0.95)  # suggest's uncertainty reads these


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from engine_helpers import make_train_data

    return make_train_data(tmp_path_factory.mktemp("synthetic"))


def test_weights_optimizer_state_ema_and_memory_stay_fp32_after_bf16_steps(data_root, tmp_path):
    from allspark.data.loaders import build_labeled_loader, build_unlabeled_loader
    from allspark.engine.step import Trainer
    from engine_helpers import make_cfg

    torch.manual_seed(0)
    cfg = make_cfg(data_root, tmp_path, "allspark", "train.amp=bf16", "train.optimizer=adamw",
                   "recipe.teacher=ema", "recipe.threshold=0.5")
    trainer = Trainer(cfg, total=10)
    memory = trainer.model.allspark.memory.queue.clone()
    batch_l, batch_u = next(iter(build_labeled_loader(cfg))), next(iter(build_unlabeled_loader(cfg)))
    for _ in range(2):
        trainer.step(batch_l, batch_u, use_memory=True)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert {p.grad.dtype for p in trainer.model.parameters() if p.grad is not None} == {torch.float32}
    moments = [t for s in trainer.optimizer.state.values() for k, t in s.items() if k != "step"]
    assert moments and {t.dtype for t in moments} == {torch.float32}
    assert {t.dtype for t in trainer.ema.state_dict().values()} == {torch.float32}
    queue = trainer.model.allspark.memory.queue
    assert queue.dtype == torch.float32 and not torch.equal(queue, memory)  # written from bf16 features, kept fp32


def test_a_bf16_run_killed_and_resumed_under_auto_equals_an_uninterrupted_one(data_root, tmp_path, monkeypatch):
    """The resumed half runs with the default `auto` on a CPU now reported without bf16: it continues in the bf16
    the run started in (config.yaml says so), and every step's losses and lr equal the uninterrupted run's."""
    from allspark.runs.metrics import read_metrics
    from engine_helpers import make_cfg, train_until

    whole, parts = (make_cfg(data_root, tmp_path / name, "allspark", "train.amp=bf16") for name in ("whole", "parts"))
    train_until(whole, monkeypatch)
    train_until(parts, monkeypatch, stop_at=5)
    cpu_reports(monkeypatch, False, False)
    resumed = make_cfg(data_root, tmp_path / "parts", "allspark")
    assert resumed.train.amp == "auto"
    train_until(resumed, monkeypatch)
    assert yaml.safe_load((tmp_path / "parts" / "config.yaml").read_text())["train"]["amp"] == "bf16"
    log = (tmp_path / "parts" / "train.log").read_text()
    assert "precision: bf16 (auto: the run continues in the precision it started in (train.amp=bf16))" in log

    def losses(run):
        return [(r["iter"], r["loss"], r["loss_l"], r["loss_u"], r["lr"]) for r in read_metrics(run)
                if r["split"] == "train"]

    assert len(losses(tmp_path / "whole")) == 8 and losses(tmp_path / "parts") == losses(tmp_path / "whole")


@pytest.mark.parametrize("bf16", [False, True])
def test_train_command_says_and_records_the_precision_auto_chose(data_root, tmp_path, monkeypatch, bf16):
    from allspark.cli import main

    cpu_reports(monkeypatch, False, bf16)
    run = tmp_path / "run"
    args = ["train", "demo", f"data.root={data_root}", f"run_dir={run}", "model.crop_size=64", "train.batch_size=2",
            "train.max_iters=1", "train.epochs=1", "--threads", "1", "--no-progress"]
    with pytest.raises(SystemExit) as code:
        main(args)
    assert code.value.code == 0
    mode, line = ("bf16", "precision: bf16 (auto: the CPU has AVX512-BF16)") if bf16 else (
        "off", "precision: fp32 (auto: no native bf16 on cpu (no AMX-BF16 or AVX512-BF16))")
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["amp"] == mode
    first = (run / "train.log").read_text().splitlines()[0]
    assert first.endswith(line)


def test_predict_and_suggest_say_record_and_keep_their_precision(tmp_path, monkeypatch, capsys):
    """`--amp auto` (the default) of predict and suggest: the choice on their first line; suggest's score store
    records it and refuses to mix in scores of another precision."""
    from inference_helpers import run_cli, tiny_checkpoint, write_images
    from suggest_helpers import write_list

    cpu_reports(monkeypatch, False, True)
    weights = tiny_checkpoint(tmp_path / "run")
    images = write_images(tmp_path / "data" / "images", [(40, 48)] * 3)
    common = ["--checkpoint", str(weights), "--threads", "1", "--device", "cpu"]
    assert run_cli(["predict", str(images[0]), "--out", str(tmp_path / "pred"), "--engine", "torch", *common]) == 0
    assert "precision: bf16 (auto: the CPU has AVX512-BF16)" in capsys.readouterr().err
    pool = write_list(tmp_path / "pool.txt", [f"images/{p.name}" for p in images])
    suggest = ["suggest", "--count", "2", "--list", str(pool), "--root", str(tmp_path / "data"), "--out",
               str(tmp_path / "out"), *common]
    assert run_cli(suggest) == 0
    assert capsys.readouterr().out.splitlines()[0] == "precision: bf16 (auto: the CPU has AVX512-BF16)"
    assert json.loads((tmp_path / "out" / "scoring" / "source.json").read_text())["amp"] == "bf16"
    assert run_cli([*suggest, "--amp", "off"]) != 0
    assert "amp 'bf16', now 'off'" in capsys.readouterr().err


def test_eval_auto_records_the_mode_it_resolved(data_root, tmp_path, monkeypatch, capsys):
    from allspark.cli import main
    from allspark.engine.loop import train
    from engine_helpers import make_cfg

    run = tmp_path / "run"
    train(make_cfg(data_root, run, "sup", "train.max_iters=1", "train.epochs=1", "train.amp=off"), progress=False)
    for bf16, mode in ((False, "off"), (True, "bf16")):
        cpu_reports(monkeypatch, False, bf16)
        with pytest.raises(SystemExit) as code:
            main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / mode), "--threads", "1"])
        assert code.value.code == 0
        assert json.loads((tmp_path / mode / "eval.json").read_text())["amp"] == mode
        assert f"allspark eval: precision: {'bf16' if bf16 else 'fp32'} (auto: " in capsys.readouterr().err


def test_the_memory_estimate_traces_the_resolved_mode(monkeypatch):
    from allspark.config.loading import load_config
    from allspark.engine.memory_budget import inference_bytes, training_step_bytes

    def step(amp):
        return training_step_bytes(load_config("demo", ["model.crop_size=64", f"train.amp={amp}"]), CPU)

    cpu_reports(monkeypatch, False, True)
    assert step("auto") == step("bf16") < step("off")  # bf16 activations take half the bytes
    cpu_reports(monkeypatch, False, False)
    assert step("auto") == step("off")
    model = load_config("demo", ["model.crop_size=64"]).model
    assert inference_bytes(model, 1, (64, 64), "bf16") < inference_bytes(model, 1, (64, 64), "off")


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimizer_kernel_is_fused_by_default_and_exact_on_request(optimizer):
    """The fused kernel makes the same update as PyTorch's default one up to rounding; `exact` is that default."""
    from torch import nn

    from allspark.config.schema import TrainConfig
    from allspark.engine.optim import build_optimizer

    torch.manual_seed(0)
    start = nn.Module()
    start.encoder, start.head = nn.Linear(8, 8), nn.Linear(8, 3)
    grads = [torch.randn_like(p) for p in start.parameters()]
    after = {}
    for kernel in ("fused", "exact"):
        model = copy.deepcopy(start)
        opt = build_optimizer(model, TrainConfig(optimizer=optimizer, optimizer_kernel=kernel))
        assert bool(opt.defaults.get("fused")) == (kernel == "fused")
        for _ in range(3):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            opt.step()
        after[kernel] = [p.detach() for p in model.parameters()]
    for fused, exact in zip(after["fused"], after["exact"]):
        torch.testing.assert_close(fused, exact, rtol=1e-5, atol=1e-6)


def test_a_run_saved_before_the_kernel_switch_reads_as_exact(tmp_path):
    from allspark.config.loading import load_config
    from allspark.config.schema import config_to_dict
    from allspark.runs.run_config import saved_config

    saved = config_to_dict(load_config("demo", [f"run_dir={tmp_path}"]))
    del saved["train"]["optimizer_kernel"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert saved_config(tmp_path).train.optimizer_kernel == "exact"
    assert load_config("demo").train.optimizer_kernel == "fused"

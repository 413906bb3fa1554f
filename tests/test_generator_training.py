"""The training loop: it learns, checkpoints on SIGTERM and resumes to the same weights, and two
gloo processes (launched by torchrun) equal one process with the same global batch.

Run as a script under torchrun this file is the distributed worker of the last test.
"""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from mindreader.checkpoint import TrainingInterrupted, load_checkpoint
from mindreader.generator import networks
from mindreader.generator.data import TrainingSet
from mindreader.generator.loss import LossConfig
from mindreader.generator.networks import Discriminator, Generator
from mindreader.generator.samples import save_grid
from mindreader.generator.stages import train_config
from mindreader.generator.store import architecture
from mindreader.generator.training import TrainConfig, Trainer, TrainingDiverged
from test_generator_networks import small_arch, tiny_D, tiny_G

torch.set_num_threads(1)


def tiny_set(n=16, n_conditions=2):
    """Images whose colour follows the first condition coordinate, so conditions carry signal."""
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(n, 2, n_conditions, 12, generator=g)
    shade = torch.sigmoid(cond[:, 0, 0, :3] * 2)  # (n, 3) colour per image
    images = (shade[:, :, None, None] * 255).expand(n, 3, 16, 16).round().to(torch.uint8).clone()
    return TrainingSet(images=images, image_index=torch.arange(n), nsd_id=torch.arange(n).numpy(), cond=cond)


class TinyEncoder(torch.nn.Module):
    """A fixed random image encoder standing in for CLIP (x in [0, 1] -> (B, 12))."""

    image_size = 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(12)
        )
        self.net(torch.zeros(1, 3, 8, 8))
        self.requires_grad_(False)

    def forward(self, x):
        return self.net(x)


def make_trainer(checkpoint_dir, callback=None, device="cpu"):
    loss_cfg = LossConfig(signal_weight=0.9, r1_gamma=0.5, r1_interval=2, pl_interval=2)
    cfg = TrainConfig(kimg=0.032, batch=4, checkpoint_kimg=0.008, log_steps=2, ema_kimg=0.01, seed=3)
    G, D = tiny_G(n_conditions=2), tiny_D(n_conditions=2, group=2)
    return Trainer(
        G,
        D,
        tiny_set(),
        loss_cfg,
        cfg,
        checkpoint_dir,
        torch.device(device),
        encoder=TinyEncoder(),
        fingerprint="t",
        callback=callback,
    )


def weights(result):
    return {
        f"{name}.{k}": v.detach().clone()
        for name in ("G", "G_ema", "D")
        for k, v in getattr(result, name).state_dict().items()
    }


def assert_same(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, **tol)


def test_training_runs_logs_and_changes_weights(tmp_path):
    trainer = make_trainer(tmp_path / "ckpt")
    start = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    result = trainer.train()
    assert result.steps == 8 and len(result.rows) == 4
    assert {"Loss/G/adv", "Loss/G/itc/1", "Loss/D/itd/0", "Loss/D/r1_penalty", "Loss/G/pl_penalty"} <= set(
        result.rows[-1]
    )
    changed = [k for k, v in result.G.state_dict().items() if not torch.equal(v, start[k])]
    assert "synthesis.b16.conv1.style.branches.1.0.weight" in changed and "mapping.fc0.weight" in changed
    # The last step's checkpoint stays: a rerun whose job's outputs were lost trains no step again
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["step"] == 8
    again = make_trainer(tmp_path / "ckpt").train()
    assert again.steps == 8 and again.rows == result.rows and again.seconds == result.seconds
    assert_same(weights(again), weights(result), rtol=0, atol=0)


def test_each_log_row_is_the_mean_of_each_term_over_its_steps(tmp_path):
    trainer = make_trainer(tmp_path / "ckpt")
    step_terms = []
    train_step = trainer.train_step

    def recording(step):
        step_terms.append(train_step(step))
        return step_terms[-1]

    trainer.train_step = recording
    rows = trainer.train().rows
    assert [row["step"] for row in rows] == [2, 4, 6, 8]
    for row in rows:
        window = step_terms[row["step"] - trainer.cfg.log_steps : row["step"]]
        means = {}
        for key in {key for terms in window for key in terms}:  # the regularisers run every 2nd step
            values = [terms[key] for terms in window if key in terms]
            means[key] = sum(values) / len(values)
        assert {key: row[key] for key in means} == pytest.approx(means)


def test_G_ema_after_a_step_is_the_ramped_up_average_with_G(tmp_path):
    """With ema_rampup 1 the EMA's half-life is the images shown so far (at most ema_kimg): after
    the first step (batch 4) the old and new weights count half each, after the second (8 images)
    the old ones 0.5 ** (4 / 8)."""
    trainer = make_trainer(tmp_path / "ckpt")
    trainer.cfg = dataclasses.replace(trainer.cfg, ema_rampup=1.0)
    for step, beta in ((0, 0.5), (1, 0.5 ** (4 / 8))):
        before = [p.clone() for p in trainer.G_ema.parameters()]
        trainer.train_step(step)
        for old, new, ema in zip(before, trainer.G.parameters(), trainer.G_ema.parameters()):
            torch.testing.assert_close(ema, beta * old + (1 - beta) * new)
        for ema, buffer in zip(trainer.G_ema.buffers(), trainer.G.buffers()):
            assert torch.equal(ema, buffer)


def test_sample_grid_shows_reals_above_draws_enlarged_to_a_readable_size(tmp_path):
    data = tiny_set()
    G = tiny_G(n_conditions=2)
    save_grid(tmp_path / "grid.png", G, data, "random", torch.device("cpu"), n=4, draws=2)
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    scale = 8  # 16 px images, enlarged to 128
    assert grid.shape == (3 * 16 * scale, 4 * 16 * scale, 3)
    reals = data.images[:4].permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(grid[::scale, ::scale][:16], np.concatenate(list(reals), axis=1))


def test_the_trainers_sample_grid_has_sample_images_columns(tmp_path):
    trainer = make_trainer(tmp_path / "ckpt")
    trainer.cfg = dataclasses.replace(trainer.cfg, sample_images=3)
    trainer.grid_dir = tmp_path
    trainer.grid("samples.png")
    assert np.asarray(Image.open(tmp_path / "samples.png")).shape == (3 * 16 * 8, 3 * 16 * 8, 3)


def test_interrupt_and_resume_gives_the_same_weights_and_losses(tmp_path, caplog):
    clean = make_trainer(tmp_path / "a").train()
    uninterrupted = weights(clean)

    def stop_at_step_4(step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        make_trainer(tmp_path / "b", callback=stop_at_step_4).train()
    steps_run = []
    resumed_trainer = make_trainer(tmp_path / "b", callback=steps_run.append)
    with caplog.at_level("INFO", logger="mindreader.generator.training"):
        resumed = resumed_trainer.train()
    # The SIGTERM after step index 4 saved 5 steps: the rerun says so and runs only the other 3.
    assert "resumed from step 5 of 8" in caplog.text
    assert steps_run == [5, 6, 7]
    assert [row["step"] for row in resumed_trainer.rows] == [2, 4, 6, 8]  # earlier rows from the checkpoint
    assert_same(weights(resumed), uninterrupted, atol=0, rtol=0)
    # every losses.csv row as in the uninterrupted run, also step 6's, whose window (steps 5 and 6)
    # the SIGTERM cut: its sums before the signal came back with the checkpoint
    untimed = [[{k: v for k, v in row.items() if k != "seconds"} for row in run.rows] for run in (resumed, clean)]
    assert untimed[0] == untimed[1]


def test_checkpoint_of_another_job_is_ignored(tmp_path):
    make_trainer(tmp_path / "c").save()
    other = make_trainer(tmp_path / "c")
    other.fingerprint = "another"
    other.try_resume()
    assert other.step == 0


def e2e_trainer(tmp_path, mapper_phase="joint", dtype=torch.float32):
    data = tiny_set()
    torch.manual_seed(2)
    data.betas, data.target = torch.randn(len(data), 20), torch.nn.functional.normalize(
        torch.randn(len(data), 2, 12), dim=-1
    )
    data.cond = None
    mappers = torch.nn.ModuleList(torch.nn.Linear(20, 12) for _ in range(2)).to(dtype)
    cfg = TrainConfig(kimg=0.008, batch=4, checkpoint_kimg=0, log_steps=1, seed=3)
    return Trainer(
        tiny_G(n_conditions=2),
        tiny_D(n_conditions=2),
        data,
        LossConfig(signal_weight=0.9, pl_interval=2, mapper_phase=mapper_phase),
        cfg,
        tmp_path / "ckpt",
        torch.device("cpu"),
        mappers=mappers,
    )


@pytest.mark.parametrize("mapper_phase, dtype", [("joint", torch.float32), ("separate", torch.float64)])
def test_end_to_end_trains_the_mappers_with_the_gan(tmp_path, mapper_phase, dtype):
    trainer = e2e_trainer(tmp_path, mapper_phase, dtype)
    before = [p.clone() for p in trainer.mappers.parameters()]
    result = trainer.train()
    assert {"Loss/M/mse/0", "Loss/M/contra/1", "Loss/M/total"} <= set(result.rows[0])
    assert all(not torch.equal(a, b) for a, b in zip(before, result.mappers.parameters()))
    assert all(p.dtype == dtype for p in result.mappers.parameters())


def test_separate_mapper_phase_steps_after_D_with_the_updated_G_and_D(tmp_path):
    # The fork's phase order G, D, M: the mappers' forward sees G and D as their phases of this
    # step left them, and only the mappers step in it. Caught: Mmain placed before Dmain, or the
    # mappers also stepped in G's main phase.
    trainer = e2e_trainer(tmp_path, "separate")
    assert [p.name for p in trainer.phases] == ["Gmain", "Greg", "Dmain", "Dreg", "Mmain"]
    assert set(trainer.phases[0].optimizers) == {"G"}
    seen = {}
    m_main = trainer.loss.m_main

    def recording(batch, rnd):
        seen["G"] = [p.detach().clone() for p in trainer.G.parameters()]
        seen["D"] = [p.detach().clone() for p in trainer.D.parameters()]
        seen["M"] = [p.detach().clone() for p in trainer.mappers.parameters()]
        return m_main(batch, rnd)

    trainer.phases[-1].fn = recording
    G0 = [p.detach().clone() for p in trainer.G.parameters()]
    D0 = [p.detach().clone() for p in trainer.D.parameters()]
    M0 = [p.detach().clone() for p in trainer.mappers.parameters()]
    trainer.train_step(0)
    assert any(not torch.equal(a, b) for a, b in zip(G0, seen["G"]))
    assert any(not torch.equal(a, b) for a, b in zip(D0, seen["D"]))
    assert all(torch.equal(a, b) for a, b in zip(M0, seen["M"]))
    assert all(torch.equal(a, b) for a, b in zip(seen["G"], trainer.G.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(seen["D"], trainer.D.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(M0, trainer.mappers.parameters()))


def test_end_to_end_mappers_get_Gs_optimiser_with_the_lazy_regularisation_adjustment(tmp_path):
    data = tiny_set()
    data.betas, data.target, data.cond = torch.randn(len(data), 20), torch.randn(len(data), 2, 12), None
    cfg = TrainConfig(kimg=0.008, batch=4, lr=0.0025, betas=(0.0, 0.99), mapper_lr=0.0025, seed=3)
    trainer = Trainer(
        tiny_G(n_conditions=2),
        tiny_D(n_conditions=2),
        data,
        LossConfig(signal_weight=0.9),
        cfg,
        tmp_path / "ckpt",
        torch.device("cpu"),
        mappers=torch.nn.ModuleList(torch.nn.Linear(20, 12) for _ in range(2)),
    )
    group = trainer.opt_M.param_groups[0]
    assert group["lr"] == pytest.approx(0.0025 * 10 / 11)
    assert group["betas"] == pytest.approx((0.0, 0.99 ** (10 / 11)))


def test_mirror_flips_each_real_image_left_right_by_the_steps_draw(tmp_path):
    # x-flips (StyleGAN2-ADA's --mirror, Lafite's pre-training): image i of a step is mirrored
    # where StepRandom(seed, step, "mirror") drew 1 for it; its condition is not. Caught: no
    # flip, a flip of the height axis, or flips drawn from another stream.
    from mindreader.generator.distributed import StepRandom

    data = tiny_set()
    data.images = torch.randint(0, 256, data.images.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    flip = torch.tensor([True, False, True, False])
    batch = data.batch(torch.arange(4), torch.device("cpu"), flip)
    plain = data.batch(torch.arange(4), torch.device("cpu"))
    torch.testing.assert_close(batch["real"][0], plain["real"][0].flip(-1))
    torch.testing.assert_close(batch["real"][1], plain["real"][1])
    assert torch.equal(batch["cond"], plain["cond"])
    trainer = make_trainer(tmp_path / "ckpt")
    trainer.data = data
    trainer.cfg.mirror = True
    seen = []
    batch_of = data.batch
    data.batch = lambda indices, device, flip=None: seen.append((indices, flip)) or batch_of(indices, device, flip)
    trainer.train_step(5)
    indices, flip = seen[0]
    assert torch.equal(flip, StepRandom(3, 5, "mirror", torch.device("cpu")).integers(2, 4) == 1)
    assert torch.equal(indices, StepRandom(3, 5, "data", torch.device("cpu")).integers(len(data), 4))


def test_pretraining_takes_its_own_settings_and_fine_tuning_the_shared_ones():
    # generator.pretrain's overrides (names.PRETRAIN_OVERRIDES) apply to pre-training only; null
    # keeps the shared key; pre-training's R1 heuristic uses its own batch. Caught: an override
    # leaking into fine-tuning, or null overriding the shared value.
    from mindreader.generator.stages import r1_gamma
    from mindreader.names import stage_generator_config

    overrides = {"batch": 64, "gpus": 4, "r1_gamma": None, "ema_kimg": 20.0, "mirror": True}
    overrides.update(contrastive_form="exp", train_z="random")
    shared = {
        "batch": 16,
        "gpus": 1,
        "r1_gamma": None,
        "resolution": 256,
        "ema_kimg": 5.0,
        "mirror": False,
        "contrastive_form": "cos",
        "train_z": "zero",
        "pretrain": overrides,
    }
    pre, fine = stage_generator_config(shared, "pretrain"), stage_generator_config(shared, "finetune")
    assert (pre["batch"], pre["gpus"], pre["ema_kimg"], pre["mirror"]) == (64, 4, 20.0, True)
    assert (pre["contrastive_form"], pre["train_z"]) == ("exp", "random")
    assert fine == shared and stage_generator_config(shared, "e2e") == shared
    assert r1_gamma(pre) == pytest.approx(0.0002 * 256**2 / 64) and r1_gamma(fine) == pytest.approx(0.8192)
    overrides.update(r1_gamma=10.0, mirror=None)
    pre = stage_generator_config(shared, "pretrain")
    assert r1_gamma(pre) == 10.0 and pre["mirror"] is False


def test_ema_ramps_up_only_when_training_starts_from_random_weights():
    cfg = {
        "batch": 16,
        "lr": 0.0025,
        "betas": [0.0, 0.99],
        "ema_kimg": 5.0,
        "ema_rampup": 0.05,
        "checkpoint_kimg": 1.0,
        "sample_kimg": 0.0,
        "sample_images": 5,
        "log_steps": 1,
        "max_nonfinite_steps": 10,
        "mirror": False,
        "e2e": {"mapper_lr": None, "mapper_betas": None, "mapper_lazy_interval": 10},
    }
    assert train_config(cfg, 1.0, 0, initialised=False).ema_rampup == 0.05
    assert train_config(cfg, 1.0, 0, initialised=False).sample_images == 5
    assert train_config(cfg, 1.0, 0, initialised=True).ema_rampup is None
    # The end-to-end mappers default to G's optimiser settings, as the original.
    assert train_config(cfg, 1.0, 0, initialised=True).mapper_lr == 0.0025


def poison(trainer, phase_name, steps):
    """Make a phase's losses NaN at ``steps``, so that its gradients are non-finite there."""
    phase = next(p for p in trainer.phases if p.name == phase_name)
    real_fn = phase.fn

    def fn(batch, rnd):
        losses, terms = real_fn(batch, rnd)
        if trainer.step in steps:
            losses = {group: loss * float("nan") for group, loss in losses.items()}
        return losses, terms

    phase.fn = fn


def test_nonfinite_gradients_skip_the_update_and_are_counted(tmp_path):
    snapshots = {}

    def snapshot(step):
        snapshots[step] = {k: v.clone() for k, v in trainer.D.state_dict().items()}

    trainer = make_trainer(tmp_path / "ckpt", callback=snapshot)
    trainer.cfg.max_nonfinite_steps = 3
    poison(trainer, "Dmain", {3, 4, 6, 7})  # two runs of two: under 3 in a row, so training completes
    result = trainer.train()
    assert result.steps == 8
    assert [row["Progress/nonfinite_steps"] for row in result.rows] == [0, 1, 2, 4]  # after steps 1, 3, 5, 7
    # Odd steps have no R1 phase: D changes only through Dmain, skipped at 3 and 7.
    assert_same(snapshots[3], snapshots[2], atol=0, rtol=0)
    assert_same(snapshots[7], snapshots[6], atol=0, rtol=0)
    assert not torch.equal(snapshots[5]["b4.out.weight"], snapshots[4]["b4.out.weight"])
    assert all(v.isfinite().all() for v in snapshots[7].values())
    # The checkpoint due after step 3 fell amid non-finite steps and was not written; step 5's was.
    _, state = load_checkpoint(tmp_path / "ckpt")
    assert state["step"] == 6 and state["nonfinite_steps"] == 2


def test_nonfinite_gradients_in_a_row_fail_the_job_keeping_the_last_good_checkpoint(tmp_path):
    good = {}

    def snapshot(step):
        if step == 1:  # the state that the checkpoint after step 1 holds
            good.update({f"D.{k}": v.clone() for k, v in trainer.D.state_dict().items()})

    trainer = make_trainer(tmp_path / "ckpt", callback=snapshot)
    trainer.cfg.max_nonfinite_steps = 3
    poison(trainer, "Dmain", set(range(3, 8)))
    with pytest.raises(TrainingDiverged, match="phase Dmain were non-finite 3 times in a row \\(the last at step 5"):
        trainer.train()
    assert trainer.nonfinite_steps == 3
    tensors, state = load_checkpoint(tmp_path / "ckpt")
    assert state["step"] == 2  # step 4's checkpoint fell amid the non-finite steps
    assert_same({k: tensors[k] for k in good}, good, atol=0, rtol=0)
    resumed = make_trainer(tmp_path / "ckpt")
    resumed.try_resume()
    assert resumed.step == 2 and resumed.nonfinite_steps == 0


def test_training_steps_with_reduced_precision_blocks(tmp_path, monkeypatch):
    """With the CPU made a reduced-precision device (as a GPU is), fp16 blocks without loss scaling
    give finite losses, R1 and path-length penalties, and no skipped step."""
    monkeypatch.setattr(networks, "REDUCED_PRECISION_DEVICES", ("cpu",))
    g_kwargs, d_kwargs = architecture(small_arch(num_fp16_res=2, precision="fp16"), 12, 2, "max")
    torch.manual_seed(0)
    trainer = Trainer(
        Generator(**g_kwargs),
        Discriminator(**d_kwargs),
        tiny_set(),
        LossConfig(signal_weight=0.9, r1_gamma=0.5, r1_interval=2, pl_interval=2),
        TrainConfig(kimg=0.016, batch=4, checkpoint_kimg=0, seed=3),
        tmp_path / "ckpt",
        torch.device("cpu"),
        encoder=TinyEncoder(),
    )
    assert trainer.G.synthesis.b16.dtype == torch.float16
    for step in range(4):
        terms = trainer.train_step(step)
        assert {"Loss/D/r1_penalty", "Loss/G/pl_penalty"} <= set(terms) or step % 2
        assert all(math.isfinite(v) for v in terms.values())
    assert trainer.nonfinite_steps == 0
    assert all(p.dtype == torch.float32 and p.isfinite().all() for p in trainer.G.parameters())


def test_two_gloo_processes_equal_one_process(tmp_path):
    single = weights(make_trainer(tmp_path / "single").train())
    out = tmp_path / "ddp.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        __file__,
        str(out),
        str(tmp_path / "ddp"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).parent, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same(load_file(str(out)), single, atol=2e-5, rtol=1e-4)


if __name__ == "__main__":
    import torch.distributed as dist

    dist.init_process_group("gloo")
    result = make_trainer(sys.argv[2]).train()
    if dist.get_rank() == 0:
        save_file({k: v.contiguous() for k, v in weights(result).items()}, sys.argv[1])
    dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() >= 4, reason="needs a machine with fewer than 4 GPUs")
def test_pre_training_on_more_gpus_than_visible_fails_naming_its_own_key():
    # The paper config pre-trains on 4 GPUs (generator.pretrain.gpus): without them the job fails
    # at once, naming that key, not generator.gpus. Caught: the message naming the shared key.
    from mindreader.generator.launch import launch

    job = {"stage": "pretrain", "generator": {"gpus": 1, "pretrain": {"gpus": 4}}}
    with pytest.raises(RuntimeError, match=r"generator\.pretrain\.gpus = 4 but"):
        launch(job, 4, "auto")
    job["generator"]["pretrain"]["gpus"] = None
    with pytest.raises(RuntimeError, match=r"^generator\.gpus = 4 but"):
        launch(job, 4, "auto")

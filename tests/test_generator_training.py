"""The training loop: it learns, checkpoints on SIGTERM and resumes to the same weights, and two
gloo processes (launched by torchrun) equal one process with the same global batch.

Run as a script under torchrun this file is the distributed worker of the last test.
"""

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

from mindreader.checkpoint import TrainingInterrupted
from mindreader.generator.data import TrainingSet
from mindreader.generator.loss import LossConfig
from mindreader.generator.samples import save_grid
from mindreader.generator.stages import train_config
from mindreader.generator.training import TrainConfig, Trainer
from test_generator_networks import tiny_D, tiny_G

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
    assert (tmp_path / "ckpt" / "state.json").exists()  # the periodic checkpoint
    trainer.discard_checkpoint()
    assert not (tmp_path / "ckpt").exists()


def test_sample_grid_shows_reals_above_draws_enlarged_to_a_readable_size(tmp_path):
    data = tiny_set()
    G = tiny_G(n_conditions=2)
    save_grid(tmp_path / "grid.png", G, data, "random", torch.device("cpu"), n=4, draws=2)
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    scale = 8  # 16 px images, enlarged to 128
    assert grid.shape == (3 * 16 * scale, 4 * 16 * scale, 3)
    reals = data.images[:4].permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(grid[::scale, ::scale][:16], np.concatenate(list(reals), axis=1))


def test_interrupt_and_resume_gives_the_same_weights(tmp_path):
    uninterrupted = weights(make_trainer(tmp_path / "a").train())

    def stop_at_step_4(step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        make_trainer(tmp_path / "b", callback=stop_at_step_4).train()
    resumed_trainer = make_trainer(tmp_path / "b")
    resumed = resumed_trainer.train()
    assert resumed_trainer.rows[0]["step"] == 2  # rows before the stop came back from the checkpoint
    assert_same(weights(resumed), uninterrupted, atol=0, rtol=0)


def test_checkpoint_of_another_job_is_ignored(tmp_path):
    make_trainer(tmp_path / "c").save()
    other = make_trainer(tmp_path / "c")
    other.fingerprint = "another"
    other.try_resume()
    assert other.step == 0


def test_end_to_end_trains_the_mappers_with_the_gan(tmp_path):
    data = tiny_set()
    torch.manual_seed(2)
    data.betas, data.target = torch.randn(len(data), 20), torch.nn.functional.normalize(
        torch.randn(len(data), 2, 12), dim=-1
    )
    data.cond = None
    mappers = torch.nn.ModuleList(torch.nn.Linear(20, 12) for _ in range(2))
    before = [p.clone() for p in mappers.parameters()]
    cfg = TrainConfig(kimg=0.008, batch=4, checkpoint_kimg=0, log_steps=1, seed=3)
    trainer = Trainer(
        tiny_G(n_conditions=2),
        tiny_D(n_conditions=2),
        data,
        LossConfig(signal_weight=0.9, pl_interval=2),
        cfg,
        tmp_path / "ckpt",
        torch.device("cpu"),
        mappers=mappers,
    )
    result = trainer.train()
    assert {"Loss/M/mse/0", "Loss/M/contra/1", "Loss/M/total"} <= set(result.rows[0])
    assert all(not torch.equal(a, b) for a, b in zip(before, result.mappers.parameters()))


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


def test_ema_ramps_up_only_when_training_starts_from_random_weights():
    cfg = {
        "batch": 16,
        "lr": 0.0025,
        "betas": [0.0, 0.99],
        "ema_kimg": 5.0,
        "ema_rampup": 0.05,
        "checkpoint_kimg": 1.0,
        "sample_kimg": 0.0,
        "log_steps": 1,
        "precision": "fp32",
        "e2e": {"mapper_lr": None, "mapper_betas": None, "mapper_lazy_interval": 10},
    }
    assert train_config(cfg, 1.0, 0, initialised=False).ema_rampup == 0.05
    assert train_config(cfg, 1.0, 0, initialised=True).ema_rampup is None
    # The end-to-end mappers default to G's optimiser settings, as the original.
    assert train_config(cfg, 1.0, 0, initialised=True).mapper_lr == 0.0025


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

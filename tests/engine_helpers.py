"""Tiny synthetic training data and configs (MiT-B0, crop 64, batch 2) for the trainer tests."""
from allspark.config.loading import load_config
from allspark.data.splits import make_split
from allspark.data.synthetic import generate_synthetic
from allspark.engine.loop import train
from allspark.engine.step import Trainer

STEP = Trainer.step  # the real one, for spies that outlive one monkeypatch


def make_train_data(root):
    """12 training images (4 labeled, 8 unlabeled: 4 iterations per epoch at batch 2) and 2 validation images."""
    generate_synthetic(root, num_train=12, num_val=2, size=64, seed=0, num_classes=4)
    make_split(root / "train.txt", root / "splits", count=4, seed=0)
    return root


def make_cfg(root, run_dir, method="allspark", *extra):
    return load_config("demo", [f"method={method}", f"data.root={root}",
                                f"run_dir={run_dir}", "model.crop_size=64", "train.batch_size=2", "train.epochs=2",
                                "train.warmup_epochs=1", "train.log_every=1", "train.checkpoint_every=3", *extra])


def train_until(cfg, monkeypatch, stop_at=None, on_step=None) -> None:
    """Train `cfg` as a run killed at iteration `stop_at` would (KeyboardInterrupt before that step), calling
    on_step(iteration, batch_l, batch_u) before each step."""
    def step(self, batch_l, batch_u, use_memory):
        if self.iteration == stop_at:
            raise KeyboardInterrupt
        if on_step:
            on_step(self.iteration, batch_l, batch_u)
        return STEP(self, batch_l, batch_u, use_memory)

    monkeypatch.setattr(Trainer, "step", step)
    try:
        train(cfg, progress=False)
    except KeyboardInterrupt:
        pass

"""Two CPU processes with the gloo backend train one step of the same fold under DDP; rank 1
runs out of (fake) CUDA memory in its first (non-final) micro-batch, and both ranks halve it."""

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

TINY = [
    "data.tile=32", "data.stride=32", "data.z_start=26", "data.z_end=34", "data.reverse=false", "data.flatten=false",
    "train.batch_size=4",
    "train.accumulate=2",
    "train.steps_per_epoch=1", "train.epochs=1", "train.num_workers=0", "train.lr=1e-2",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, demo_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from kit.config import load_config
    from kit.train import ddp, loop

    info = ddp.init_distributed()
    if rank == 1:  # an OOM inside the model's forward, after DDP's pre-forward collectives
        from kit.models.unet import TimmUnet

        forward, raised = TimmUnet.forward, []

        def forward_oom_once(self, x):
            if self.training and not raised:
                raised.append(1)
                raise torch.cuda.OutOfMemoryError("fake CUDA out of memory")
            return forward(self, x)

        TimmUnet.forward = forward_oom_once
    trainer = loop._Trainer(
        load_config("cpu-demo-unet", TINY), data_dir=Path(demo_dir), fold=0,
        folds_csv=Path(demo_dir) / "folds.csv", out=Path(out), max_steps=None, resume=False,
        log_images=False, info=info, device=torch.device("cpu"), progress=False,
    )  # fmt: skip
    trainer.run()
    seen = trainer.last_tiles.tolist()
    # Parameters, not buffers: BatchNorm running stats stay per rank (DDP broadcasts rank 0's
    # before each forward; checkpoints hold rank 0's).
    params = {k: v.detach().clone() for k, v in trainer.stepper.model.named_parameters()}
    state = {"model": params, "tiles": seen, "micro_batch": trainer.stepper.micro_batch}
    torch.save(state, Path(out) / f"rank{rank}.pt")
    ddp.cleanup(info)


def test_two_gloo_ranks_hold_identical_weights_after_a_step_and_agree_on_oom(demo_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(demo_dir), str(out)), nprocs=2, join=True)
    a, b = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert a["tiles"] != b["tiles"]  # each rank trained on its own shard of the tiles
    assert a["micro_batch"] == b["micro_batch"] == 2  # rank 1's OOM halved both
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    from kit.checkpoint import load_checkpoint
    from kit.config import load_config
    from kit.models import build_model

    last = load_checkpoint(out / "checkpoints" / "last.pt")  # written by rank 0 only
    assert last["step"] == 1
    torch.manual_seed(0)  # the trainer's seed: the weights both ranks started from
    initial = build_model(load_config("cpu-demo-unet", TINY)).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in a["model"].items())
    assert all(torch.equal(last["model"][k], v) for k, v in a["model"].items())

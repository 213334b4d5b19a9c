"""Run a config under torchrun with one rank made to fail at its second step (tests/test_ddp.py).

    torchrun --nproc_per_node 2 tests/ddp_worker.py CONFIG.yaml FAIL_RANK
"""

import sys

from torch.distributed.elastic.multiprocessing.errors import record
from transformers import TrainerCallback

from labkit.config import load_config
from labkit.run import rank, train_from_config


class FailOnRank(TrainerCallback):
    def __init__(self, which: int):
        self.which = which

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 1 and rank() == self.which:
            raise RuntimeError(f"deliberate failure on rank {rank()}")


@record
def main() -> None:
    cfg = load_config(sys.argv[1])
    train_from_config(cfg, progress=False, callbacks=[FailOnRank(int(sys.argv[2]))])


if __name__ == "__main__":
    main()

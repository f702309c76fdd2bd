"""torchrun for the GPU stages' rules: torch.distributed.run with the same arguments, in this
process (`exec`'d by the rule's shell, so SIGTERM, kill -9 and the trainers' parent-death
signal work as with torchrun itself), that ends a failed run with one summary line instead of
torchrun's traceback:

    python scripts/torchrun.py --standalone --nproc-per-node=4 scripts/finetune.py ...

    torchrun: finetune.py failed: rank 0 of 4: exit code 2 (a refused spec or split CSV);
    state dir results/state/catmae_vits16 (every attempt's log: .../trainer.log)

Exit code: 0, or 1 for any failure (as torchrun's).
"""

from __future__ import annotations

import sys

from k400ft.distributed import torchrun

if __name__ == "__main__":
    sys.exit(torchrun(sys.argv[1:]))

#!/usr/bin/env python
"""Train or evaluate an rpanoptic model (Detectron2's usual command line).

  python tools/train_net.py --config-file configs/<name>.yaml [--num-gpus 8] [KEY VALUE ...]
  python tools/train_net.py --config-file configs/<name>.yaml --resume      # after a crash
  python tools/train_net.py --config-file configs/<name>.yaml --eval-only MODEL.WEIGHTS <ckpt>
  python tools/train_net.py --config-file ... --eval-only --eval-timesteps 1,5,10,20,30,40 \\
      MODEL.WEIGHTS <ckpt>      # PQ at each inference step count, one pass over the data
  # two machines: on each, --num-gpus G --num-machines 2 --machine-rank {0,1} \\
  #     --dist-url tcp://<host of rank 0>:<port>
Without CUDA, --num-gpus N starts N CPU processes (gloo).
"""
import rpanoptic  # noqa: F401  (registers rpanoptic's components, also in spawned workers)
from rpanoptic.engine.cli import launch_main, main, parse_args  # noqa: F401  (main: for tests)

if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    launch_main(args)

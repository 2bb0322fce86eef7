"""`accelerate launch train.py ...`: the salt_hf training CLI (see `python train.py --help`)."""

import sys

from salt_hf.cli.train import main

if __name__ == "__main__":
    sys.exit(main())

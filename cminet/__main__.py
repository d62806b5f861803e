"""``python -m cminet ...`` runs the ``cminet`` command line; this is what makes
``torchrun --standalone --nproc_per_node=N -m cminet train ...`` start DDP training."""

from cminet.cli import main

if __name__ == "__main__":
    main(prog_name="cminet")

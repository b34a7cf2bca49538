"""`python -m r2gen.export ckpt=<run>/checkpoints/best.ckpt out=<new folder> [part=lm]` (see r2gen.export)."""

if __name__ == "__main__":
    from r2gen.cli import export_main

    export_main()

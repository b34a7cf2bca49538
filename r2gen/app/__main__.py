"""`python -m r2gen.app ckpt=<ckpt or export folder> [host=127.0.0.1] [port=8000]`: see r2gen.app."""

from r2gen.cli import app_main

if __name__ == "__main__":
    app_main()

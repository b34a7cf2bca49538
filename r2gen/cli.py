"""The console scripts (`r2gen-train`, `r2gen-evaluate`, ... in pyproject.toml) and the `python -m` entry points:
the top floor. Each composes the package's config and runs one tool inside the error boundary
(`r2gen.boundary.module_main`); nothing in r2gen imports this module."""

from __future__ import annotations

from r2gen.boundary import module_main


def train_main():
    """`r2gen-train key=value ...`: train.py for an installed r2gen, from any folder."""
    from r2gen.train import monitored_score, train

    return module_main(train, result=monitored_score)


def evaluate_main():
    """`r2gen-evaluate ckpt=... [key=value ...]`: evaluate.py for an installed r2gen."""
    from r2gen.evaluate import evaluate

    return module_main(evaluate, config_name="evaluate")


def compare_main():
    """`r2gen-compare a=<run A> b=<run B> [key=value ...]`: python -m r2gen.compare, a paired test of two systems."""
    from r2gen.compare import main

    return main()


def predict_main():
    """`r2gen-predict ckpt=... input=... [output=...]`: predict.py for an installed r2gen."""
    from r2gen.predict import predict

    return module_main(predict, config_name="predict")


def app_main():
    """`r2gen-app ckpt=... [host=127.0.0.1] [port=8000]`: python -m r2gen.app, the local web page."""
    from r2gen.app import serve

    return module_main(serve, config_name="app")


def export_main():
    """`r2gen-export ckpt=... out=... [part=lm]`: python -m r2gen.export."""
    from r2gen.export import export

    return module_main(export, config_name="export")


def verify_main():
    """`r2gen-verify lm=<name> ...`: python -m r2gen.verify."""
    from r2gen.verify import main

    return main()


def cache_main():
    """`r2gen-cache align=shallow ...`: python -m r2gen.cache."""
    from r2gen.cache import main

    return main()

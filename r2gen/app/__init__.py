"""`python -m r2gen.app ckpt=<ckpt or export folder>`: a local web page to try a trained model.

Drop one to four images of a study (PNG, JPEG, DICOM) on the page; it shows them as the model reads them (DICOM
through r2gen's display pipeline), the generated report and its CheXpert labels, and offers the report as text or
JSON. The report is the one `predict.py input=[those files]` writes: a checkpoint is rebuilt and generated for by
predict.py's own functions (`reporter.py`). The HTTP side (`server.py`: `GET /`, `GET /health`, `POST /report`)
and its page (`page.html`, self-contained: it works offline) need FastAPI, uvicorn and python-multipart, the
`app` extra; r2gen imports without them, and `serve` names the extra to install when one is missing.
"""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from r2gen.errors import ConfigError

# import name -> the package pip installs it from
EXTRA = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}


def require_extra() -> None:
    """Raise one line naming the `app` extra when FastAPI, uvicorn or python-multipart is missing."""
    missing = []
    for module, package in EXTRA.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise ConfigError(f"python -m r2gen.app needs {', '.join(missing)}, not installed: "
                          f"pip install -e \".[app]\" (an installed r2gen: pip install \"r2gen[app]\")")


def serve(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """Load `cfg.ckpt`'s model once and serve the page on `cfg.host`:`cfg.port` until Ctrl-C. `overrides`: as on
    the command line (default: Hydra's)."""
    require_extra()
    from r2gen.app.server import serve as run_server

    run_server(cfg, overrides)

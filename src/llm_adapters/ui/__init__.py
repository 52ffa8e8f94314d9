"""The web app of `llm-adapters ui` (Gradio, the optional extra `ui`): Compare, Study and Runs tabs.

Nothing else in the package imports this: `config.py`, `studies.py`, `runs.py` and `pool.py` need no Gradio,
`app.py` does.

Example:
    >>> from llm_adapters.ui import UiConfig, launch
    >>> launch(UiConfig(base_model="smollm2-135m", adapter=("runs/demo",)))  # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any

from .config import UiConfig


def launch(config: UiConfig, block: bool = True) -> Any:
    """Serve the app (see `app.launch`).

    Raises:
        UserError: Gradio is not installed (the extra `ui`).
    """
    from llm_adapters.errors import UserError

    try:
        from .app import launch as serve
    except ImportError as error:
        raise UserError(f"llm-adapters ui needs Gradio: pip install 'llm-adapters[ui]' ({error})") from error
    return serve(config, block)


__all__ = ["UiConfig", "launch"]

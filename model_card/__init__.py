"""The model card of a released adapter: a Jinja template and a pure renderer (pushing is a separate step)."""

from model_card.render import TEMPLATE_PATH, load_run_info, render_model_card

__all__ = ["TEMPLATE_PATH", "load_run_info", "render_model_card"]

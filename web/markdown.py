"""Finished replies rendered from Markdown to HTML on the server. Raw HTML in model output is never passed through:
markdown-it-py escapes it (html=False) and refuses javascript:/vbscript:/data: link targets by default. Images stay
text: the page loads nothing from another origin, and a reply must not make the browser fetch a URL the model chose."""
from __future__ import annotations

from functools import lru_cache

from markdown_it import MarkdownIt

_renderer = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
_renderer.enable("table").disable("image")
_default_rules = {name: _renderer.renderer.rules[name] for name in ("fence", "code_block")}


def _link_open(renderer, tokens, index, options, env):
    # Links from the model open in a new tab that cannot reach back into this page.
    tokens[index].attrSet("target", "_blank")
    tokens[index].attrSet("rel", "noopener noreferrer nofollow")
    return renderer.renderToken(tokens, index, options, env)


def _with_copy_button(rule_name: str):
    default = _default_rules[rule_name]

    def render(renderer, tokens, index, options, env):
        # app.js copies the block's text when its button is pressed (no inline script: the CSP forbids it).
        button = '<button type="button" class="copy" aria-label="Copy code">Copy</button>'
        return f'<div class="code">{button}{default(tokens, index, options, env)}</div>'

    return render


_renderer.add_render_rule("link_open", _link_open)
for _name in _default_rules:
    _renderer.add_render_rule(_name, _with_copy_button(_name))


# A saved reply never changes, and every page load and every tab's resync shows the same last 100 messages:
# rendering them anew took ~0.7 ms a reply, 35 ms of the event loop per resync (10 tabs reconnecting stalled the
# stream for 0.35 s). Twice the history shown, so a page of earlier messages does not evict the recent ones.
@lru_cache(maxsize=256)
def to_html(text: str) -> str:
    return _renderer.render(text)

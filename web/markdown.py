"""Finished replies rendered from Markdown to HTML on the server. Raw HTML in model output is never passed through:
markdown-it-py escapes it (html=False) and refuses javascript:/vbscript:/data: link targets by default. Images stay text: the page loads nothing from
another origin, and a reply must not make the browser fetch a URL the model chose."""
from __future__ import annotations

from markdown_it import MarkdownIt

_renderer = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table").disable("image")


def _link_open(renderer, tokens, index, options, env):
    # Links from the model open in a new tab that cannot reach back into this page.
    tokens[index].attrSet("target", "_blank")
    tokens[index].attrSet("rel", "noopener noreferrer nofollow")
    return renderer.renderToken(tokens, index, options, env)


_renderer.add_render_rule("link_open", _link_open)


def to_html(text: str) -> str:
    return _renderer.render(text)

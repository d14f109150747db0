"""Replies rendered from Markdown: the useful parts kept, anything that could act on the page made inert."""
from __future__ import annotations

from web.markdown import to_html


def test_lists_code_and_links_render_and_links_open_safely():
    html = to_html("- one\n- two\n\n```py\nprint(1)\n```\n\n[docs](https://example.org)")
    assert "<li>one</li>" in html and '<code class="language-py">print(1)' in html
    assert 'aria-label="Copy code"' in html
    assert '<a href="https://example.org" target="_blank" rel="noopener noreferrer nofollow">docs</a>' in html


def test_raw_html_script_links_and_images_stay_text():
    html = to_html('<script>alert(1)</script> <img src=x onerror=alert(2)> [x](javascript:alert(3)) '
                   '![i](http://tracker.example/pixel.png)')
    assert "<script" not in html and "<img" not in html
    assert 'href="javascript' not in html
    assert "&lt;script&gt;" in html


def test_a_note_that_names_a_command_shows_it_as_code_not_backticks():
    from fasthtml.common import to_xml
    from web.components import ErrorNote
    note = to_xml(ErrorNote("Ollama is not running: start it with `ollama serve`, <b>then</b> wait."))
    assert "<code>ollama serve</code>" in note and "`" not in note and "<b>" not in note

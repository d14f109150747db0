"""The saved chat history is rendered once per entry and kept (web/app.py): what the cache gives back must be what
the components render, and an assistant change that gets settled must be rendered anew, with its outcome."""
from __future__ import annotations

from fasthtml.common import to_xml

from services import protocol
from services.protocol import Message
from web.components import ChatHistory

ENTRIES = [
    Message(protocol.CHAT_SENT, {"text": "what is <b>open</b>?"}, "web", seq=1),
    Message(protocol.REPLY_SAVED, {"reply_id": "r1", "text": "**Nothing.** Enjoy it.", "done_reason": "stop",
                                   "covers_seq": 1}, "web", seq=2),
    Message(protocol.TOOL_PROPOSED, {"call_id": "c1", "reply_id": "r1", "action": "delete", "id": 4,
                                     "title": "dust"}, "web", seq=3),
]
SETTLED = Message(protocol.TOOL_SETTLED, {"settles": 3, "outcome": "denied"}, "web", seq=4)


def markup(items) -> str:
    return to_xml(tuple(items), indent=False)


def test_the_kept_markup_is_what_the_components_render():
    rendered: dict = {}
    first = markup(ChatHistory(ENTRIES, more=True, rendered=rendered))
    assert first == markup(ChatHistory(ENTRIES, more=True))
    assert len(rendered) == len(ENTRIES)
    assert markup(ChatHistory(ENTRIES, more=True, rendered=rendered)) == first  # from the cache this time
    assert "&lt;b&gt;open&lt;/b&gt;" in first and "<strong>Nothing.</strong>" in first


def test_a_settled_change_is_rendered_anew_with_its_outcome():
    rendered: dict = {}
    pending = markup(ChatHistory(ENTRIES, more=False, rendered=rendered))
    assert "Allow" in pending
    settled = markup(ChatHistory(ENTRIES, more=False, settled={3: SETTLED}, rendered=rendered))
    assert "Allow" not in settled and "Denied: nothing changed." in settled
    assert settled == markup(ChatHistory(ENTRIES, more=False, settled={3: SETTLED}))

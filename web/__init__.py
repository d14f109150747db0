"""The web process: FastHTML + HTMX page, the journal, and the relay of LLM output to every open tab."""

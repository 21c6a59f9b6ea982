"""Rendering helpers every stage's report part uses: tables (Markdown and HTML) and figure basics."""

"""The web console: server-rendered pages at ``/`` (Jinja2, our own CSS and JS, no build step)."""

"""The look every HTML page of Ironsight shares (audit and compare reports, the history's
trends page): page, headings and metadata lines. Each page adds its own rules after it."""

from __future__ import annotations

PAGE_CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:0;
  background:#f6f7f9;color:#1f2328}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:26px} h2{margin:28px 0 10px;font-size:20px}
.meta{color:#57606a;font-size:13px}
"""

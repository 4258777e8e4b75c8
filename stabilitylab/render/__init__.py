"""Rendering one document model (``model``) three ways: terminal tables (``table``), markdown
(``markdown``) and JSON (``jsonout``); the bulk summary of user rows (``bulk``) and figures (``plots``)."""

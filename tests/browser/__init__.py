"""The browser end-to-end test's driver and media (see tests/test_browser.py)."""

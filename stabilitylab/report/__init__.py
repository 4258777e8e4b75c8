"""The generated report (markdown with figures): ``build``.  Above the API: it calls the same
functions as the command line."""

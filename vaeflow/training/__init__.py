"""Training: a plain-torch loop (``loop``) and the Ray Train driver around it (``ray``)."""

"""Tests of the pure-torch ZoomR core (zoomr_sgl without SGLang)."""

#!/usr/bin/env python3
"""Start SGLang's server with the ZoomR plugin: ``python launch.py --enable-zoomr [SGLang flags] [--zoomr-* flags]``.
See ``zoomr_sgl/launcher.py`` for the contract and README.md for the flags."""

import sys

from zoomr_sgl.launcher import main

if __name__ == "__main__":
    sys.exit(main())

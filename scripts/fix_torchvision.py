"""Make the PyPI torchvision 0.28.0 (a CUDA build) importable next to CPU torch.

Its ``_meta_registrations.py`` registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms``
unconditionally; without the compiled ops that dies with "operator torchvision::nms does not exist", and SGLang
imports torchvision at start-up. We guard those two registrations with ``torchvision.extension._has_ops()``.
Idempotent: a second run finds the guard and changes nothing. Prints what it did; exits 2 on an unknown file.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

GUARD = "_zoomr_register_fake_if_ops"
HELPER = f'''

def {GUARD}(name):  # zoomr-sgl: skip fake kernels for ops this build lacks
    if torchvision.extension._has_ops():
        return torch.library.register_fake(name)
    return lambda fn: fn
'''


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("fix_torchvision: torchvision is not installed", file=sys.stderr)
        return 2
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    if GUARD in text:
        print(f"fix_torchvision: already applied to {path}")
        return 0
    targets = ['@torch.library.register_fake("torchvision::nms")', '@torch.library.register_fake("torchvision::qnms")']
    anchor = "import torchvision.extension  # noqa: F401\n"
    if anchor not in text or any(t not in text for t in targets):
        print(f"fix_torchvision: {path} does not look like torchvision 0.28.0's; not patched", file=sys.stderr)
        return 2
    text = text.replace(anchor, anchor + HELPER, 1)
    for target in targets:
        text = text.replace(target, target.replace("torch.library.register_fake", GUARD))
    path.write_text(text)
    print(f"fix_torchvision: patched {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

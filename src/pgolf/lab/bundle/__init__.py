"""`pgolf bundle`: the single-file `train_gpt.py` a submission ships (see `assemble`)."""

from pgolf.lab.bundle.assemble import (
    FORMS,
    PER_RUN,
    SRC,
    assemble,
    build,
    bundle_config,
    code_size,
    core_hash,
    core_sources,
    forms,
    header,
    omitted,
    rewrite_imports,
    strip_source,
    write_bundle,
)

__all__ = [
    "FORMS",
    "PER_RUN",
    "SRC",
    "assemble",
    "build",
    "bundle_config",
    "code_size",
    "core_hash",
    "core_sources",
    "forms",
    "header",
    "omitted",
    "rewrite_imports",
    "strip_source",
    "write_bundle",
]

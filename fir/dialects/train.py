"""The training attributes: which arguments of a function are trained (the `autodiff` pass reads them)."""

from __future__ import annotations

from fir.dialects.attr_schema import AttrSpec, BoolSpec

# `trainable = true` on an argument: autodiff appends the loss's gradient with respect to it to the results.
TRAINABLE = "trainable"
ARG_ATTRS: dict[str, AttrSpec] = {TRAINABLE: BoolSpec(default=False, doc="a trained parameter (autodiff)")}

__all__ = ["TRAINABLE", "ARG_ATTRS"]

"""One-off checks that informed the shipped models but are not part of their recipe: ``engine-check`` (is the label
engine's flexibility like real MD?) and ``sd-probe`` (which per-residue quantities rank the real-MD errors?).  Their
reports are cited by onnx_models/MODEL_CARD.md; nothing in the recipe imports them."""

"""The zoo: small GPT-2-architecture models trained by circuitsteer itself, shipped with weights,
a word-level tokenizer and a model card (card.json + README.md) holding measured task scores.

* ``toy-ioi``: 4 layers x 4 heads, d_model 128, trained on IOI / greater-than / sentiment /
  neutral text from :mod:`circuitsteer.tasks` (``python -m circuitsteer.zoo.train toy-ioi``);
  it solves IOI by slot, not by an IOI circuit.
* ``ioi-circuit``: 4 layers x 8 heads, d_mlp 256, trained on a curriculum where repetition is
  the only IOI cue (:mod:`circuitsteer.zoo.curriculum`); its card's mechanism section and
  ``circuits/ioi-circuit/ioi.json`` come from ``python -m circuitsteer.zoo.audit ioi-circuit``.

Load with ``circuitsteer.load_model("toy-ioi")``; re-measure with
:func:`circuitsteer.zoo.evaluate.evaluate`.

Example:
    >>> from circuitsteer.zoo.train import RECIPES
    >>> RECIPES["ioi-circuit"].n_head, RECIPES["toy-ioi"].n_head
    (8, 4)
"""

# what a zoo folder holds (train.py writes them; circuitsteer.models loads them)
FOLDER_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "card.json",
    "README.md",
)

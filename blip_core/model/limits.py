"""Text lengths of the BLIP (MED) family, in tokens, as BLIP trains and evaluates with them.

Here rather than in ``config`` because they describe how the model is used, not its shapes:
the same limits apply to every preset. Longer texts are truncated.
"""

MAX_QUESTION_TOKENS = 35  # a VQA question
MAX_TEXT_TOKENS = 35  # a retrieval / ITM text, and a candidate answer in VQA's rank mode

"""Scene-world text for the small frozen LLM: a caption followed by questions and their answers
("a red circle above a blue square. Question: what colour is the circle? Answer: red"), and the
word-level tokenizer over the scene vocabulary (a ``tokenizers`` ``tokenizer.json``, so that
transformers, ``blip_core.tokenizer.LlmTokenizer`` and our training all read the same file)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from blip_core import scenes
from blip_core.api_blip2 import ANSWER_TEMPLATES
from training.data import pre_caption, rng_for

# OPT's special-token layout: <s> 0, <pad> 1, </s> 2 (OPT's BOS and EOS), <unk> 3
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
PAD_ID, BOS_ID, EOS_ID = 1, 2, 2
SEPARATOR = SPECIALS[EOS_ID]  # OPT separates documents with </s>
# the words the stage-2 templates add to the scene world's own ("Question: ... Answer:", "a photo of")
TEMPLATE_WORDS = ("question", "answer", "short", "photo", "picture", "of", "image")
SCENE_RENDER_SIZE = 16  # only the texts are used; the smallest image is the cheapest render


def llm_vocab() -> list[str]:
    """Token list by id: OPT's specials, then every scene-world token and the template words."""
    words = [w for w in (*scenes.VOCABULARY, *TEMPLATE_WORDS) if w not in SPECIALS]
    return list(SPECIALS) + sorted(set(words))


def build_tokenizer(path: str | Path) -> Path:
    """Write a word-level ``tokenizer.json`` over ``llm_vocab()``: lower-cased, split exactly as
    ``scenes.split_words`` splits (letter runs, single digits, single punctuation marks)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = {t: i for i, t in enumerate(llm_vocab())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(r"[a-z]+|[0-9]|[^\sa-z0-9]"), behavior="isolated")])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces and glues punctuation back
    tok.add_special_tokens(list(SPECIALS))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def caption_text(caption: str) -> str:
    """A caption as the LLM reads it before questions: "a red circle above a blue square."."""
    return pre_caption(caption) + "."


def qa_text(question: str, answer: str = "") -> str:
    """"Question: {question} Answer: {answer}" (BLIP-2's OPT template; without ``answer``, the
    prompt the LLM answers)."""
    return f"{ANSWER_TEMPLATES['opt'].format(question)} {answer}".rstrip()


class SceneText(Dataset):
    """Text ``key`` (``epoch * count + i``, as ``EpochBatches`` serves them) of scene ``i``, drawn
    per epoch: its captions part (one caption, or two different ones of the same scene with
    probability ``P_SECOND_CAPTION``), then 0 .. ``max_qa`` of its question/answer pairs. A text has
    at least one part; some have no caption (what the LLM sees when asked with no image) and some no
    question (what stage 2 asks of it: the caption alone). Between captions and questions stands
    ". " or, with probability ``P_SEPARATOR``, OPT's document separator ``</s>``, as when OPT's
    pre-training concatenates documents: the LLM learns to read a description across ``</s>``,
    which is where BLIP-2's soft prompt sits (before the prompt's ``</s>``). Every answer is
    followed by ``</s>``, so the LLM stops after answering."""

    P_CAPTION = 0.85  # of texts with questions
    P_SECOND_CAPTION = 0.3
    P_SEPARATOR = 0.5

    def __init__(self, scene_seed: int, count: int, max_objects: int, seed: int = 0, max_qa: int = 3):
        self.scene_seed, self.count, self.max_objects, self.seed, self.max_qa = (scene_seed, count, max_objects,
                                                                                  seed, max_qa)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key: int) -> dict:
        i = key % self.count
        rng = rng_for(self.seed, key, "text")
        scene = scenes.render(scenes.stream_seed(self.scene_seed, i), SCENE_RENDER_SIZE, self.max_objects)
        n_qa = rng.randint(0, min(self.max_qa, len(scene.qa)))
        captions = []
        if n_qa == 0 or rng.random() < self.P_CAPTION:
            k = 2 if len(scene.captions) > 1 and rng.random() < self.P_SECOND_CAPTION else 1
            captions = [caption_text(c) for c in rng.sample(list(scene.captions), k)]
        questions = [qa_text(q, a) for q, a in rng.sample(list(scene.qa), n_qa)]
        separator = " " if not (captions and questions) or rng.random() >= self.P_SEPARATOR else f" {SEPARATOR} "
        # each answer ends its document: the LLM learns to stop after an answer (</s>), as the
        # last one's end of text (the objective appends </s>) teaches it too
        qa = f" {SEPARATOR} ".join(questions)
        return {"text": separator.join(filter(None, (" ".join(captions), qa))), "image_id": i, "skipped": 0}

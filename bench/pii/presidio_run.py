"""Runs Presidio's analyzer over a corpus file cut into 4 KiB prompts, the way
`pii-bench` measures the Iron Cage engine, and prints MB/s and ms per prompt.

Called by presidio.sh:  python presidio_run.py CORPUS [--no-ner] [--model NAME]
"""

import argparse
import os
import sys
import time

# Presidio's email recognizer uses tldextract, which would download the public
# suffix list; use the snapshot it ships instead (no network beyond the index).
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")


def prompts(text, size=4096):
    """4 KiB pieces on character boundaries (as pii-bench splits the bytes)."""
    data = text.encode("utf-8")
    out, i = [], 0
    while i < len(data):
        e = min(i + size, len(data))
        while e < len(data) and (data[e] & 0xC0) == 0x80:
            e -= 1
        out.append(data[i:e].decode("utf-8"))
        i = e
    return out


def engine(no_ner, model):
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    if no_ner:
        import spacy

        class BlankSpacy(SpacyNlpEngine):
            """spaCy's tokenizer only: no model, so no NER (PERSON, LOCATION...)."""

            def load(self):
                self.nlp = {"en": spacy.blank("en")}

        nlp = BlankSpacy(models=[{"lang_code": "en", "model_name": "blank:en"}])
        nlp.load()
    else:
        nlp = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model}])
        nlp.load()
    return AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--no-ner", action="store_true")
    ap.add_argument("--model", default="en_core_web_sm")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()

    with open(args.corpus, encoding="utf-8") as f:
        pieces = prompts(f.read())
    analyzer = engine(args.no_ner, args.model)
    analyzer.analyze(text=pieces[0], language="en")  # warm-up

    done_bytes, times, found = 0, [], 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for p in pieces:
        t = time.perf_counter()
        found += len(analyzer.analyze(text=p, language="en"))
        times.append(time.perf_counter() - t)
        done_bytes += len(p.encode("utf-8"))
        if time.perf_counter() - wall0 > args.seconds:
            break
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    times.sort()
    p50 = times[len(times) // 2] * 1e3
    mode = "no NER (blank spaCy pipeline, pattern recognizers only)" if args.no_ner else f"spaCy model {args.model}"
    print(f"presidio-analyzer, {mode}: {len(times)} prompts of 4 KiB, {done_bytes} bytes, {found} findings")
    print(f"  {done_bytes / cpu / 1e6:.3f} MB/s per core (CPU time), {done_bytes / wall / 1e6:.3f} MB/s wall; "
          f"{p50:.1f} ms p50 per 4 KiB prompt")
    return 0


if __name__ == "__main__":
    sys.exit(main())

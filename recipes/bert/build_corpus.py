"""Build an English pretraining corpus from documentation installed on the machine (no network needed).

Debian's and PyPI's documentation packages ship a lot of edited English prose as HTML (Sphinx,
DocBook) or plain text: `apt-get install python3.11-doc postgresql-doc-15 linux-doc-6.1` puts
about 10M words under /usr/share/doc. This script walks the given folders and writes what
`prepare.py --text-files` reads: one paragraph per line, a blank line between documents (one
document per file). From HTML it keeps the text of <p> elements outside navigation, headers and
footers (code blocks are never inside <p>); from plain text, blank-line separated paragraphs with
their lines joined, skipping indented (literal) blocks. Paragraphs shorter than --min-words or
with little prose (letters under half the characters) are dropped, and so is every repeat of a
paragraph already written (licence and navigation boilerplate).

    apt-get install -y python3.11-doc postgresql-doc-15
    python recipes/bert/build_corpus.py /usr/share/doc/python3.11/html /usr/share/doc/postgresql-doc-15/html \\
        --output corpus/docs.txt
    python recipes/bert/prepare.py --text-files corpus/docs.txt --train-tokenizer --vocab-size 16384 \\
        --max-seq-length 128 --output-dir data/docs128
"""

from __future__ import annotations

import argparse
import os
import re
from html.parser import HTMLParser

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
TEXT_SUFFIXES = (".txt", ".rst", ".text")
SKIPPED_TAGS = {"nav", "header", "footer", "script", "style", "pre", "code-block"}
SKIPPED_CLASSES = {"sphinxsidebar", "related", "footer", "navheader", "navfooter", "breadcrumbs", "toctree-wrapper"}
VOID_TAGS = {"br", "img", "hr", "meta", "link", "input", "wbr", "area", "base", "col", "embed", "source", "track"}
WHITESPACE = re.compile(r"\s+")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="folders (searched recursively) or single files")
    p.add_argument("--output", required=True, help="text file to write")
    p.add_argument("--min-words", type=int, default=8)
    return p.parse_args(argv)


class ParagraphParser(HTMLParser):
    """Collects the text of <p> elements that are not inside navigation or boilerplate containers."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self.open_tags: list[tuple[str, bool]] = []  # (tag, opens a skipped region)
        self.skip_depth = 0
        self.current: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag in VOID_TAGS:
            return
        classes = set((dict(attrs).get("class") or "").split())
        skipped = tag in SKIPPED_TAGS or bool(classes & SKIPPED_CLASSES)
        self.open_tags.append((tag, skipped))
        self.skip_depth += skipped
        if tag == "p" and not self.skip_depth:
            self.current = []

    def handle_endtag(self, tag):
        if tag in VOID_TAGS or not any(t == tag for t, _ in self.open_tags):
            return  # a stray end tag
        while self.open_tags:  # also closes elements whose end tags HTML lets authors omit
            open_tag, skipped = self.open_tags.pop()
            self.skip_depth -= skipped
            if open_tag == "p" and self.current is not None:
                self.paragraphs.append("".join(self.current))
                self.current = None
            if open_tag == tag:
                break

    def handle_data(self, data):
        if self.current is not None and not self.skip_depth:
            self.current.append(data)


def html_paragraphs(text: str) -> list[str]:
    parser = ParagraphParser()
    parser.feed(text)
    parser.close()
    return parser.paragraphs


def text_paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks with their lines joined; indented blocks (code, literals) are left out."""
    blocks = re.split(r"\n\s*\n", text)
    return [" ".join(block.split("\n")) for block in blocks if block.strip() and not block[:1].isspace()]


def is_prose(paragraph: str, min_words: int) -> bool:
    letters = sum(c.isalpha() for c in paragraph)
    return len(paragraph.split()) >= min_words and letters >= 0.5 * len(paragraph)


def document_files(folders: list[str]) -> list[str]:
    files = []
    for folder in folders:
        if os.path.isfile(folder):
            files.append(folder)
            continue
        for root, dirs, names in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))  # Sphinx's _sources repeat the HTML as markup
            files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(HTML_SUFFIXES + TEXT_SUFFIXES)]
    return files


def main(argv=None) -> dict:
    args = parse_args(argv)
    files = document_files(args.folders)
    if not files:
        raise SystemExit(f"no {'/'.join(HTML_SUFFIXES + TEXT_SUFFIXES)} files under {args.folders}")
    seen, documents, words = set(), 0, 0
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as out:
        for path in files:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            split = html_paragraphs if path.lower().endswith(HTML_SUFFIXES) else text_paragraphs
            kept = []
            for paragraph in split(text):
                paragraph = WHITESPACE.sub(" ", paragraph).strip()
                if paragraph not in seen and is_prose(paragraph, args.min_words):
                    seen.add(paragraph)
                    kept.append(paragraph)
            if kept:
                out.write("\n".join(kept) + "\n\n")
                documents += 1
                words += sum(len(p.split()) for p in kept)
    stats = {"files": len(files), "documents": documents, "paragraphs": len(seen), "words": words}
    print(f"{stats['documents']} documents ({stats['files']} files read), {stats['paragraphs']} paragraphs, "
          f"{stats['words']:,} words → {args.output}")
    return stats


if __name__ == "__main__":
    main()

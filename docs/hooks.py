"""mkdocs hook: the committed benchmark plots live in benchmarks/results/, outside docs/; add them
to the site at the same relative path, so that the README's image links work in both places."""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent


def on_files(files, config):
    for plot in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        files.append(File(str(plot.relative_to(ROOT)), str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files

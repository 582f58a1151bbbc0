#!/usr/bin/env bash
# Fetch the public annotation files the tests (and teacher_coverage) read, from their official
# sources, and lay them out as the tests expect:
#
#   <folder>/flickr30k_entities/  annotations.tar.gz (Annotations/, Sentences/), train.txt, val.txt,
#                                 test.txt, UNRELATED_CAPTIONS, phraseloceval_annotation_test.json.gz
#   <folder>/refcoco/             <dataset>_<split_by>_<split>.csv.gz (9 evaluation splits),
#                                 phraseloceval_<dataset>_annotation_<split>.json.gz (4 files)
#   <folder>/visual_genome/       vg_objects_vocab.txt, vg_attributes_vocab.txt
#
# then:  LIGHTNING_WSG_SHARED_DATA=<folder> make test
#
# Sources:
#   Flickr30K Entities        github.com/BryanPlummer/flickr30k_entities (annotations.zip, split files)
#   phraseloceval             github.com/josiahwang/phraseloceval (reference ground truth, data/*/annotation_*.json)
#   RefCOCO family            the refer toolkit's data (github.com/lichengunc/refer: refcoco.zip, refcoco+.zip,
#                             refcocog.zip with refs(<split_by>).p and instances.json). The CSV files the tests
#                             read (uid, ref_id, img_id, sent_id, sent, bbox: one row per expression of an
#                             evaluation split) are produced by the refer toolkit from those files; this script
#                             takes the ones published by a refer-toolkit fork (github.com/MarkHershey/refer,
#                             data/*.csv) rather than downloading the zips and running the toolkit.
#   Visual Genome vocabulary  github.com/peteanderson80/bottom-up-attention (data/genome/1600-400-20/)
# Images are not fetched (Flickr30K and COCO images come from their owners under their terms).
#
# It needs internet access (curl or wget), unzip or python3, tar and gzip. It could not be run
# against the real sources on the machines this project was developed on (they have no internet
# access): it was checked with `bash -n` and run with a stand-in for curl that served local copies
# of these files, so the layout is tested but the URLs are not; report one that moved.
#
# Everything it writes stays inside <folder> (a temporary folder inside it is removed on exit).
# Files already present are kept; --force fetches them again. --unpacked also leaves Annotations/
# and Sentences/ unpacked beside annotations.tar.gz, so that the folder is a --data.root as well.
set -euo pipefail

usage="usage: $0 [--force] [--unpacked] <folder>"
force=0
unpacked=0
dest=""
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --unpacked) unpacked=1 ;;
        -h | --help) echo "$usage"; exit 0 ;;
        -*) echo "$usage" >&2; exit 2 ;;
        *) if [ -n "$dest" ]; then echo "$usage" >&2; exit 2; fi; dest="$arg" ;;
    esac
done
if [ -z "$dest" ]; then
    echo "$usage" >&2
    exit 2
fi

RAW=https://raw.githubusercontent.com
FLICKR="$RAW/BryanPlummer/flickr30k_entities/HEAD"
PHRASELOCEVAL="$RAW/josiahwang/phraseloceval/HEAD/data"
REFER_CSV="$RAW/MarkHershey/refer/HEAD/data"
BOTTOM_UP="$RAW/peteanderson80/bottom-up-attention/HEAD/data/genome/1600-400-20"

mkdir -p "$dest/flickr30k_entities" "$dest/refcoco" "$dest/visual_genome"
tmp="$(mktemp -d "$dest/.get_annotations.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

fetch() {  # fetch URL FILE: download to a temporary name, then move into place
    local url="$1" out="$2" part
    part="$tmp/$(basename "$out").part"
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 3 -o "$part" "$url"
    elif command -v wget >/dev/null 2>&1; then
        wget -q --tries=3 -O "$part" "$url"
    else
        echo "neither curl nor wget is installed" >&2
        exit 1
    fi
    mv "$part" "$out"
}

wanted() {  # wanted FILE: true when FILE must be (re)fetched
    [ "$force" = 1 ] || [ ! -s "$1" ]
}

fetch_gz() {  # fetch_gz URL FILE.gz: download and gzip (no name or time stamp in the header)
    local url="$1" out="$2" plain
    plain="$tmp/$(basename "$out" .gz)"
    fetch "$url" "$plain"
    gzip -n -c "$plain" >"$tmp/$(basename "$out")"
    mv "$tmp/$(basename "$out")" "$out"
    rm -f "$plain"
}

unzip_to() {  # unzip_to ARCHIVE FOLDER
    if command -v unzip >/dev/null 2>&1; then
        unzip -q "$1" -d "$2"
    else
        python3 -m zipfile -e "$1" "$2"
    fi
}

# --- Flickr30K Entities ------------------------------------------------------------------------
flickr="$dest/flickr30k_entities"
for name in train.txt val.txt test.txt UNRELATED_CAPTIONS; do
    if wanted "$flickr/$name"; then
        echo "Flickr30K Entities: $name"
        fetch "$FLICKR/$name" "$flickr/$name"
    fi
done
if wanted "$flickr/annotations.tar.gz" || { [ "$unpacked" = 1 ] && [ ! -d "$flickr/Sentences" ]; }; then
    echo "Flickr30K Entities: annotations.zip -> annotations.tar.gz (Annotations/ and Sentences/ at its top)"
    fetch "$FLICKR/annotations.zip" "$tmp/annotations.zip"
    unzip_to "$tmp/annotations.zip" "$tmp/release"
    top="$(find "$tmp/release" -maxdepth 3 -type d -name Sentences -print -quit)"
    if [ -z "$top" ] || [ ! -d "$(dirname "$top")/Annotations" ]; then
        echo "annotations.zip holds no Annotations/ and Sentences/ folders" >&2
        exit 1
    fi
    top="$(dirname "$top")"
    tar -czf "$tmp/annotations.tar.gz" -C "$top" Annotations Sentences
    mv "$tmp/annotations.tar.gz" "$flickr/annotations.tar.gz"
    if [ "$unpacked" = 1 ]; then
        rm -rf "$flickr/Annotations" "$flickr/Sentences"
        mv "$top/Annotations" "$top/Sentences" "$flickr/"
    fi
fi
if wanted "$flickr/phraseloceval_annotation_test.json.gz"; then
    echo "phraseloceval: Flickr30K Entities test ground truth"
    fetch_gz "$PHRASELOCEVAL/flickr30k/annotation_test.json" "$flickr/phraseloceval_annotation_test.json.gz"
fi

# --- RefCOCO, RefCOCO+, RefCOCOg ---------------------------------------------------------------
for split in refcoco_unc_val refcoco_unc_testA refcoco_unc_testB \
    refcoco+_unc_val refcoco+_unc_testA refcoco+_unc_testB \
    refcocog_umd_val refcocog_umd_test refcocog_google_val; do
    if wanted "$dest/refcoco/$split.csv.gz"; then
        echo "RefCOCO family: $split.csv"
        fetch_gz "$REFER_CSV/$split.csv" "$dest/refcoco/$split.csv.gz"
    fi
done
# phraseloceval's files: <its folder>/<its file> -> the name the tests read
for pair in refcoco/annotation_test.json:phraseloceval_refcoco_annotation_test.json.gz \
    refcoco+/annotation_testA.json:phraseloceval_refcoco+_annotation_testA.json.gz \
    refcoco+/annotation_testB.json:phraseloceval_refcoco+_annotation_testB.json.gz \
    refcocog/annotation_test.json:phraseloceval_refcocog_annotation_test.json.gz; do
    origin="${pair%%:*}"
    target="${pair#*:}"
    if wanted "$dest/refcoco/$target"; then
        echo "phraseloceval: $origin"
        fetch_gz "$PHRASELOCEVAL/$origin" "$dest/refcoco/$target"
    fi
done

# --- Visual Genome vocabulary ------------------------------------------------------------------
for kind in objects attributes; do
    if wanted "$dest/visual_genome/vg_${kind}_vocab.txt"; then
        echo "Visual Genome: ${kind}_vocab.txt"
        fetch "$BOTTOM_UP/${kind}_vocab.txt" "$dest/visual_genome/vg_${kind}_vocab.txt"
    fi
done

echo "done: $dest (LIGHTNING_WSG_SHARED_DATA=$dest make test)"

#!/bin/sh
# Copies the Istio example corpus and a few malformed shapes into the config_yaml fuzz corpus.
# Usage: agent/fuzz/seed.sh   (from anywhere; idempotent)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
corpus="$here/corpus/config_yaml"
mkdir -p "$corpus"
for f in "$here"/../../tests/fixtures/istio/*.yaml; do
    cp "$f" "$corpus/istio-$(basename "$f")"
done
# Small seeds for the shapes the front end guards against.
printf 'a: &x [1, 2]\nb: *x\n' > "$corpus/seed-alias.yaml"
printf -- '- - - - - - - - x\n' > "$corpus/seed-block-nesting.yaml"
printf '[[[[{a: [1, {b: c}]}]]]]\n' > "$corpus/seed-flow-nesting.yaml"
printf 'a: 1\na: 2\n' > "$corpus/seed-duplicate-key.yaml"
printf 'a: |\n  *text\nb: "multi\n  line"\n' > "$corpus/seed-scalars.yaml"
printf -- '---\nkind: Namespace\n...\n--- |\n  x\n' > "$corpus/seed-documents.yaml"
echo "seeded $(ls "$corpus" | wc -l) files into $corpus"

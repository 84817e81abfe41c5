#!/usr/bin/env bash
# Print the README's configuration tables (markdown) from the programs' own
# --help, so that the docs list every flag and environment variable there is.
#   scripts/config-table.sh   (after make)
set -euo pipefail
cd "$(dirname "$0")/.."

table() {
    echo "| flag | environment variable | default | what it does |"
    echo "|---|---|---|---|"
    awk '
        /^  --/ {
            if (flag != "") row()
            flag = $1; arg = ""; env = ""
            for (i = 2; i <= NF; i++) if ($i ~ /^MILLRACE_/) env = $i; else if (arg == "") arg = $i
            desc = ""; next
        }
        flag != "" && /^      / { sub(/^ +/, ""); desc = desc (desc == "" ? "" : " ") $0; next }
        END { if (flag != "") row() }
        function row(   def, d) {
            def = ""; d = desc
            if (match(d, / ?\(default: [^)]*\)$/)) {
                def = substr(d, RSTART, RLENGTH); d = substr(d, 1, RSTART - 1)
                sub(/^ ?\(default: /, "", def); sub(/\)$/, "", def)
            }
            gsub(/\|/, "\\|", d); gsub(/</, "\\<", d); gsub(/>/, "\\>", d)
            if (flag == "--help") return
            if (arg == "") # a boolean: --no-FLAG turns it off
                arg = "`, `--no-" substr(flag, 3)
            else
                arg = " " arg
            printf "| `%s%s` | %s | %s | %s |\n", flag, arg,
                env == "" ? "" : "`" env "`", def == "" ? "" : "`" def "`", d
        }'
}

echo "#### \`millrace-api\`"
echo
build/millrace-api --help | table
echo
echo "#### \`millrace-worker serve\`"
echo
build/millrace-worker serve --help | table

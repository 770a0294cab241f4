#!/bin/sh
# Dump the TTI database with pg_dump (custom format: every table, index and extension; restore
# with pg_restore), check that the dump reads back, then forget dumps older than
# BACKUP_KEEP_DAYS. Connection from the libpq variables (PGHOST, PGUSER, PGDATABASE, PGPASSWORD).
# A failed or interrupted run leaves no partial file behind and exits non-zero.
set -eu
: "${BACKUP_DIR:?set BACKUP_DIR}" "${PGDATABASE:?set PGDATABASE}"
keep_days="${BACKUP_KEEP_DAYS:-14}"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
final="$BACKUP_DIR/$PGDATABASE-$stamp.dump"
partial="$final.partial"
mkdir -p "$BACKUP_DIR"
trap 'rm -f "$partial"' EXIT
pg_dump --format=custom --compress=6 --file="$partial"
pg_restore --list "$partial" > /dev/null  # the table of contents is complete and readable
mv "$partial" "$final"
find "$BACKUP_DIR" -maxdepth 1 -name "$PGDATABASE-*.dump" -mtime +"$keep_days" -print -delete
echo "backup written: $final ($(wc -c < "$final") bytes)"

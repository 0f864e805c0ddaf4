# The released 0.1.0, built from its own commit, for the tests that run it
# (tests/upgrade.sh, tests/mixed_versions.sh). Source this file.

OLD_VERSION=0.1.0
OLD_COMMIT=5bff85ef10ede4f78ddc154f622bb9377e1cd662   # tag v0.1.0

# old_package BUILD_DIR: build OLD_VERSION into BUILD_DIR/pkg, its files laid
# out from / (usr/lib/postgresql/15/lib/converge.so, usr/share/...). Its
# sources and target directory stay in BUILD_DIR, so a second call (the
# other test) reuses the build. Its own target directory: two checkouts of
# one workspace must not share one.
old_package() {
    local build=$1
    if ! git cat-file -e "$OLD_COMMIT^{commit}" 2>/dev/null; then
        git fetch -q --unshallow 2>/dev/null || git fetch -q origin "$OLD_COMMIT" \
            || { echo "commit $OLD_COMMIT (v$OLD_VERSION) is not in this clone"; return 1; }
    fi
    mkdir -p "$build"
    # (The stamp is written once the sources are whole, and names them.)
    if [ "$(cat "$build/src.commit" 2>/dev/null)" != "$OLD_COMMIT" ]; then
        rm -rf "$build/src" "$build/src.commit" && mkdir -p "$build/src"
        git archive "$OLD_COMMIT" | tar -x -C "$build/src"
        echo "$OLD_COMMIT" > "$build/src.commit"
    fi
    (cd "$build/src" && CARGO_TARGET_DIR="$build/target" \
        cargo pgrx package --debug --pg-config /usr/bin/pg_config --out-dir "$build/pkg" >"$build/build.log" 2>&1) \
        || { tail -30 "$build/build.log"; return 1; }
}
